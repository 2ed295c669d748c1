"""Progress bars that still report when output goes to a log file.

On a terminal this is a plain tqdm bar. Without one (``nohup``, CI, ``> run.log``) tqdm would either stay silent or
fill the file with carriage returns; here the bar's line is logged instead, at most once per ``log_interval``
seconds, so a long evaluation or training run shows how far it got.
"""

from __future__ import annotations

import logging
import sys

from tqdm.auto import tqdm

logger = logging.getLogger("verl.progress")


class _LogLines:
    """File-like sink for tqdm: each rendered bar becomes one log record."""

    def write(self, text: str) -> None:
        line = text.strip("\r\n ")
        if line:
            logger.info(line)

    def flush(self) -> None:
        pass


class _LoggedBar(tqdm):
    """A bar whose postfix waits for the next timed line: tqdm redraws on every ``set_postfix``, which without a
    terminal would log a second line per training step."""

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        super().set_postfix(ordered_dict, refresh=False, **kwargs)


def progress(total: int | None = None, desc: str = "", *, disable: bool = False, log_interval: float = 60.0,
             iterable=None, **kwargs) -> tqdm:
    """A tqdm bar over ``total`` items (or ``iterable``); logged every ``log_interval`` s when stderr is no TTY."""
    if disable or sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, disable=disable, **kwargs)
    kwargs.pop("leave", None)  # the logged lines stay anyway; a closing line marks the end
    return _LoggedBar(iterable, total=total, desc=desc, file=_LogLines(), mininterval=log_interval,
                      maxinterval=log_interval, ascii=True, leave=True, **kwargs)
