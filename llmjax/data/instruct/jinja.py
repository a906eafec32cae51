"""Hugging Face chat templates: the Jinja `chat_template` of a tokenizer, rendered as
`transformers`' `apply_chat_template(..., tokenize=False)` renders it.

The environment matches transformers': a jinja2 `ImmutableSandboxedEnvironment` with
trim_blocks and lstrip_blocks, the loopcontrols extension, a `{% generation %}` block (rendered
as its body), the globals `raise_exception`, `strftime_now`, `dict` and `namespace`, and a
`tojson` filter that is plain `json.dumps` (no HTML escaping). A render sees `messages`,
`add_generation_prompt` and the tokenizer's named special tokens (`bos_token`, `eos_token`, ...).

Templates are untrusted code. One that names an underscore attribute (`''.__class__`,
`x.__globals__`, `x['_y']`, `x|attr('__z')`) is refused before it is used, and one the
sandbox stops while rendering is refused too: both raise ChatTemplateError.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llmjax.data.instruct.messages import Message
from llmjax.data.instruct.templates import Piece, split_by_prefix
from llmjax.errors import ChatTemplateError

# The named special tokens transformers passes to a template (its special_tokens_map).
SPECIAL_TOKEN_NAMES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


class _Generation(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: renders its body (transformers uses the tag
    to find reply spans; here rendering prefixes finds them)."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return caller()


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _Dict:
    """The template's `dict`: builds dicts without handing the template the type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _Namespace(jinja2.utils.Namespace):
    """jinja's `namespace()` without underscore names (they would reach Python internals)."""

    def __init__(*args: Any, **kwargs: Any):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)


def _check_name(name: Any) -> None:
    if isinstance(name, str) and name.startswith("_"):
        raise SecurityError(f"underscore attribute {name!r} on a namespace")


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals.update(
        raise_exception=_raise_exception,
        strftime_now=_strftime_now,
        dict=_Dict(),
        namespace=_Namespace,
    )
    return env


def _underscore_names(ast: jinja2.nodes.Node) -> list[str]:
    """Underscore attribute names the template reads: `x._y`, `x['_y']`, `x|attr('_y')`."""
    names = [n.attr for n in ast.find_all(jinja2.nodes.Getattr) if n.attr.startswith("_")]
    for n in ast.find_all(jinja2.nodes.Getitem):
        if isinstance(n.arg, jinja2.nodes.Const) and str(n.arg.value).startswith("_"):
            names.append(str(n.arg.value))
    for n in ast.find_all(jinja2.nodes.Filter):
        arg = n.args[0] if n.name == "attr" and n.args else None
        if isinstance(arg, jinja2.nodes.Const) and str(arg.value).startswith("_"):
            names.append(str(arg.value))
    return names


@dataclass(frozen=True)
class HFChatTemplate:
    """A Jinja chat template and the special tokens it may print (`bos_token`, ...).

    Its replies end with whatever end-of-turn text the template writes (<|im_end|>,
    <|eot_id|>): that text is part of the reply's pieces, and no EOS id is added.
    """

    source: str
    special_tokens: Mapping[str, str] = field(default_factory=dict)
    appends_eos: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _ = self._template  # parse and check now: a bad template fails where it is given

    @cached_property
    def _template(self) -> jinja2.Template:
        env = _environment()
        try:
            ast = env.parse(self.source)
        except TemplateError as e:
            raise ChatTemplateError(f"the chat template does not parse: {e}") from e
        unsafe = _underscore_names(ast)
        if unsafe:
            raise ChatTemplateError(
                f"the chat template reads underscore attribute(s) {sorted(set(unsafe))}, which "
                f"reach Python internals; refused. Use a template that only reads message "
                f"fields and the documented variables"
            )
        return env.from_string(self.source)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> HFChatTemplate:
        """The template of a HF tokenizer directory or its tokenizer_config.json.

        In a directory, `chat_template.jinja` (newer transformers save it there) wins over the
        config's "chat_template"; a list of named templates gives the one named "default".
        """
        path = Path(path).expanduser()
        directory, config_file = (path, path / "tokenizer_config.json")
        if path.is_file():
            directory, config_file = path.parent, path
        config = {}
        if config_file.is_file():
            try:
                config = json.loads(config_file.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise ChatTemplateError(f"{config_file} is not JSON ({e})") from e
        jinja_file = directory / "chat_template.jinja"
        if path.is_dir() and jinja_file.is_file():
            source = jinja_file.read_text(encoding="utf-8")
        else:
            source = config.get("chat_template")
            if isinstance(source, list):
                named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
                source = named.get("default")
        if not isinstance(source, str):
            raise ChatTemplateError(
                f"{config_file} has no chat template (no string 'chat_template', and no "
                f"chat_template.jinja beside it); pass a template with HFChatTemplate(source)"
            )
        return cls(source, special_tokens_from_config(config))

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
        """The template's text for `messages`, as apply_chat_template(tokenize=False) gives it."""
        try:
            return self._template.render(
                messages=[m.as_dict() for m in messages],
                add_generation_prompt=add_generation_prompt,
                **self.special_tokens,
            )
        except SecurityError as e:
            raise ChatTemplateError(
                f"the chat template tried something the sandbox forbids ({e}); refused"
            ) from e
        except TemplateError as e:
            raise ChatTemplateError(
                f"the chat template failed to render {len(messages)} message(s): "
                f"{type(e).__name__}: {e}"
            ) from e

    def pieces(self, messages: Sequence[Message]) -> list[Piece]:
        return split_by_prefix(self.render, messages)

    def prompt(self, messages: Sequence[Message]) -> str:
        return self.render(messages, add_generation_prompt=True)


def special_tokens_from_config(config: Mapping[str, Any]) -> dict[str, str]:
    """The named special tokens of a tokenizer_config.json (strings or AddedToken dicts)."""
    out = {}
    for name in SPECIAL_TOKEN_NAMES:
        value = config.get(name)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            out[name] = value
    return out
