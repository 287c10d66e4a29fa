"""Glue shared by the `trl-pro` command line and its scripts: one-line errors and `accelerate launch` arguments.

TRL's CLI hands every argument its script parser does not know to `accelerate launch`. Here those arguments are
checked first, so that a typo fails at once with one line instead of a usage dump or a traceback.
"""

from __future__ import annotations

from trl_pro.cli.errors import fail


_SENTINEL = "__trl_pro_training_script__"


def _launch_parser(prog: str):
    from accelerate.commands.launch import launch_command_parser

    parser = launch_command_parser()
    parser.error = lambda message: fail(prog, f"accelerate launch: {message}")
    return parser


def normalize_config_flags(config_remaining: list[str]) -> list[str]:
    """`TrlParser` turns the YAML keys that no dataclass knows into `["--key", str(value)]` pairs, meant for
    `accelerate launch`. For its on/off switches (`cpu: true`, `multi_gpu: true`...), `--key True` is not valid:
    make it `--key` (and drop `--key False`)."""
    from accelerate.commands.launch import launch_command_parser

    actions = launch_command_parser()._actions
    switches = {option for action in actions if action.nargs == 0 for option in action.option_strings}
    out: list[str] = []
    for key, value in zip(config_remaining[::2], config_remaining[1::2]):
        if key in switches and value in ("True", "False"):
            out += [key] if value == "True" else []
        else:
            out += [key, value]
    return out + config_remaining[len(config_remaining) // 2 * 2 :]


def parse_launch_args(launch_args: list[str], prog: str):
    """Parse `accelerate launch` arguments; returns (namespace, arguments accelerate does not know)."""
    namespace, unknown = _launch_parser(prog).parse_known_args(list(launch_args) + [_SENTINEL])
    strays = []
    if namespace.training_script != _SENTINEL:  # a stray value was taken for the training script
        strays = [namespace.training_script] + [a for a in namespace.training_script_args if a != _SENTINEL]
    return namespace, unknown + strays


def check_launch_args(launch_args: list[str], config_remaining: list[str], prog: str, config_path: str | None):
    """Fail with one line when an argument is neither a script flag nor an `accelerate launch` flag."""
    namespace, unknown = parse_launch_args(launch_args, prog)
    if unknown:
        from_config = config_path is not None and all(token in config_remaining for token in unknown)
        where = f" in {config_path}" if from_config else ""
        fail(
            prog,
            f"unrecognized arguments{where}: {' '.join(unknown)} (neither a `{prog}` flag nor an `accelerate launch` "
            f"flag; see `{prog} --help`)",
        )
    return namespace


def config_path_of(argv: list[str]) -> str | None:
    return argv[argv.index("--config") + 1] if "--config" in argv and argv.index("--config") + 1 < len(argv) else None


def resolve_launch_args(launch_args: list[str], prog: str) -> list[str]:
    """TRL's `--accelerate_config NAME|PATH` -> `--config_file PATH` (TRL's bundled names: single_gpu, multi_gpu,
    zero1, zero2, zero3, fsdp1, fsdp2)."""
    from trl.cli.accelerate_config import resolve_accelerate_config_argument

    try:
        return resolve_accelerate_config_argument(launch_args)
    except ValueError as error:
        fail(prog, error)


def _flag_key(token: str) -> str:
    return "--" + token.lstrip("-").split("=", 1)[0].replace("-", "_")


def merge_launch_flags(config_flags: list[str], cli_flags: list[str]) -> list[str]:
    """`accelerate launch` flags from the YAML then the command line, a command-line flag replacing the YAML one
    (`--accelerate_config fsdp2` on the command line wins over `accelerate_config: zero3` in the file)."""
    cli_keys = {_flag_key(token) for token in cli_flags if token.startswith("-")}
    kept, i = [], 0
    while i < len(config_flags):
        width = 2 if i + 1 < len(config_flags) and not config_flags[i + 1].startswith("-") else 1
        if _flag_key(config_flags[i]) not in cli_keys:
            kept += config_flags[i : i + width]
        i += width
    return kept + cli_flags


