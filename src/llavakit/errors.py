"""Typed errors for mistakes in a user's input or setup, each said in one line that names the culprit.

The command prints such an error as `llavakit <command>: error: <message>` and exits with
status 2 (no traceback; `--debug` or `LLAVAKIT_DEBUG=1` shows it). Library callers catch
`LlavaKitError` or a subclass. Each subclass is also the built-in exception a caller would
expect (`ValueError`, `FileExistsError`, ...), so existing `except ValueError` code keeps working.
A bug in llavakit itself is never a `LlavaKitError`: it keeps its traceback.
"""

from __future__ import annotations


class LlavaKitError(Exception):
    """A mistake the user can fix: a bad file, sample, key, path or request, named in the message."""


class ConfigError(LlavaKitError, ValueError):
    """A recipe, model spec or override that cannot be used (unknown key, wrong type, impossible value)."""


class DataError(LlavaKitError, ValueError):
    """A dataset or question file that cannot be read or holds unusable records."""


class CheckpointError(LlavaKitError, ValueError):
    """A folder that is not the checkpoint it should be, or a checkpoint file that is damaged."""


class OutputExistsError(LlavaKitError, FileExistsError):
    """An output path that holds earlier work, which llavakit does not overwrite unless told to."""


class OutputPathError(LlavaKitError, ValueError):
    """An output path that cannot be written (a file where a folder is needed, a folder under a file)."""


class ResumeMismatchError(ConfigError):
    """A resumed run whose config changes a setting the checkpoint cannot honour."""


class DeviceError(LlavaKitError, ValueError):
    """A device, dtype or quantisation that this machine cannot provide."""


class RequestError(LlavaKitError, ValueError):
    """A request (an LLM endpoint's reply, a served request) that breaks the protocol or a limit."""
