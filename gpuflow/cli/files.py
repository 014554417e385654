"""Output files of the ``graph`` and ``bench`` commands, written atomically."""

from __future__ import annotations

import os
import tempfile

from gpuflow.cli import CommandError


def _current_umask() -> int:
    # os.umask can only be read by setting it, so set it back at once.
    umask = os.umask(0)
    os.umask(umask)
    return umask


def check_output_folder(path: str, option: str) -> None:
    """Raise CommandError unless ``path``'s folder exists and ``path`` is not a folder."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CommandError(
            f"cannot write {option} {path}: the folder {folder} does not exist; create it or "
            f"choose another {option}"
        )
    if os.path.isdir(path):
        raise CommandError(f"{option} {path} is a folder; name a file, for example {option} "
                           f"{os.path.join(path, 'out')}")


def write_atomic(path: str, data, option: str) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder.

    ``data`` is bytes, or a function that writes to the open binary file. The
    temporary file replaces ``path`` with os.replace only once it is complete,
    so a failure leaves no partly written file at ``path``. ``option`` names
    the command-line option in error messages.
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        descriptor, temporary = tempfile.mkstemp(
            prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder
        )
    except OSError as error:
        raise _write_error(path, folder, error, option) from None
    try:
        with os.fdopen(descriptor, "wb") as file:
            if callable(data):
                data(file)
            else:
                file.write(data)
        # mkstemp creates the file readable by its owner only, so give it the usual mode.
        os.chmod(temporary, 0o666 & ~_current_umask())
        os.replace(temporary, path)
    except BaseException as error:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        if isinstance(error, OSError):
            raise _write_error(path, folder, error, option) from None
        raise


def _write_error(path: str, folder: str, error: OSError, option: str) -> CommandError:
    if isinstance(error, FileNotFoundError) and not os.path.isdir(folder):
        return CommandError(
            f"cannot write {path}: the folder {folder} does not exist; create it or choose "
            f"another {option}"
        )
    reason = error.strerror or str(error)
    return CommandError(f"cannot write {path}: {reason}; choose another {option}")
