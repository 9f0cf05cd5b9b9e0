"""The built-in visual world, offline instruction data from its ground truth, and the LLM teacher."""
