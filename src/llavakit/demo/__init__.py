"""`llavakit demo`: the whole LLaVA recipe on the synthetic world, on a laptop CPU."""
