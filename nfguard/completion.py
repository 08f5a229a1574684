"""Bash completion for `nfguard`, rendered from the command line's own parser so that it never
lists a command or option the CLI lacks (or misses one it gained). The Debian package installs
the output of `python -m nfguard.completion` as /usr/share/bash-completion/completions/nfguard.
"""

from __future__ import annotations

import argparse
import shlex
import sys

# Options whose value is a file or directory (their metavar says so): the shell completes
# file names for them, and nothing for other values (hosts, users, numbers).
PATH_METAVARS = frozenset({"PATH", "DIR", "FILE", "FILE_OR_DIR"})
_SCRIPT = """\
# bash completion for nfguard: rendered by `python -m nfguard.completion` from its parser.
_nfguard() {{
    local cur prev words cword
    _init_completion || return
    local command="" i
    for ((i = 1; i < cword; i++)); do
        case ${{words[i]}} in
{global_valued}
            -*) ;;
            *) command=${{words[i]}}; break ;;
        esac
    done
    local options
    case $command in
{options}
    esac
    case $command:$prev in
{values}
    esac
    if [[ -z $command && $cur != -* ]]; then
        COMPREPLY=($(compgen -W {commands} -- "$cur"))
    elif [[ $cur == -* || -z $command ]]; then
        COMPREPLY=($(compgen -W "$options" -- "$cur"))
    else
        _filedir
    fi
}} &&
    complete -F _nfguard nfguard
"""


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _visible(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [action for action in parser._actions
            if action.option_strings and action.help != argparse.SUPPRESS]


def _words(words: list[str]) -> str:
    return shlex.quote(" ".join(words))


def bash(parser: argparse.ArgumentParser) -> str:
    """The completion script: commands, each command's options, and an option's value from
    its choices, or a file name where its metavar says it is one."""
    commands = _subcommands(parser)
    global_options = _visible(parser)
    options = [f"        '') options="
               f"{_words([o for a in global_options for o in a.option_strings])} ;;"]
    values: list[str] = []
    for name, sub in commands.items():
        actions = _visible(sub)
        options.append(f"        {shlex.quote(name)}) options="
                       f"{_words([o for a in actions for o in a.option_strings])} ;;")
        for action in actions:
            if action.nargs == 0:
                continue
            pattern = "|".join(f"{shlex.quote(name)}:{option}"
                               for option in action.option_strings)
            if action.choices:
                choices = _words([str(choice) for choice in action.choices])
                reply = f'COMPREPLY=($(compgen -W {choices} -- "$cur"))'
            elif action.metavar in PATH_METAVARS:
                reply = "_filedir"
            else:
                reply = "COMPREPLY=()"
            values.append(f"        {pattern}) {reply}; return ;;")
    global_valued = [o for a in global_options if a.nargs != 0 for o in a.option_strings]
    return _SCRIPT.format(
        commands=_words(list(commands)), options="\n".join(options),
        values="\n".join(values),
        global_valued=(f"            {'|'.join(global_valued)}) ((i++)) ;;" if global_valued
                       else ""))


def main() -> int:
    from nfguard.cli import _parser

    sys.stdout.write(bash(_parser()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
