"""The `trl-pro` command line: the subcommands (`commands`), launching through `accelerate launch` (`launch`), one-line
errors (`errors`) and what every training command shares (`training`). The scripts themselves, one per command, are
`trl_pro/scripts/<command>.py`."""

from trl_pro.cli.commands import main


__all__ = ["main"]
