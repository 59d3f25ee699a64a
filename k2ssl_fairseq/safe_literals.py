"""Config strings that fairseq passes to ``eval``, checked as plain data first.

fairseq builds some objects from strings with Python's ``eval`` (``conv_feature_layers``, optimizer
``*_betas``, ``eval_str_list``/``eval_str_dict``/``eval_bool`` users, ...). When such a string comes
from a file (a checkpoint's ``cfg``/``args``, an encoder record, ``w2v_args``) it would run as code.
:func:`parse_literal` accepts only what those keys legitimately hold (numbers, strings, ``None``,
booleans, tuples, lists, dicts, and ``+``/``*`` of those, as ``[(512,10,5)] + [(512,3,2)] * 4``
needs), evaluates it itself within size limits, and refuses everything else. :data:`EVALUATED_KEYS`
is the audited list of key names (``docs/security.md`` lists the call sites); :func:`unsafe_values`
walks a loaded config and reports every offending value, including OmegaConf resolver interpolations
(``${oc.env:...}``, any ``${name:...}``), which would read this machine's environment and be copied
resolved into new files. Plain references to other keys of the same config (``${common.fp16}``, as
fairseq's own dataclass defaults write them) read nothing outside the file and are allowed.
"""
from __future__ import annotations

import argparse
import ast
import re
from typing import Any, Iterator, List, Mapping, Tuple

#: Key names whose string values fairseq 0.12 or the plugin hands to ``eval`` (directly or through
#: ``utils.eval_str_list``/``eval_str_dict``/``eval_bool``), wherever they sit in a config.
EVALUATED_KEYS = frozenset({
    # models: wav2vec, wav2vec2, hubert, multires_hubert, s2t_wav_transformer (and the plugin's k2ssl_hubert)
    "conv_feature_layers", "conv_aggregator_layers", "override_encoder_layers",
    # optimizers
    "adam_betas", "adamax_betas", "lamb_betas", "adafactor_eps",
    # criterions
    "wer_args",
    # data
    "feature_encoder_spec",
    # language models and fconv / lightconv / lstm (reachable through load_model_ensemble_and_task)
    "character_filters", "encoder_layers", "decoder_layers", "encoder_attention", "decoder_attention",
    "self_attention", "project_input", "gated_attention", "downsample", "pretrained",
    "adaptive_softmax_cutoff", "adaptive_input_cutoff", "encoder_kernel_size_list", "decoder_kernel_size_list",
    "decoder_glu", "encoder_glu", "weight_softmax", "left_pad_source", "left_pad_target",
    "xformers_att_config",
    # multilingual data manager (eval_str_dict)
    "extra_data", "extra_lang_pairs", "langtoks_specs", "langtoks", "lang_tok_replacing_bos_eos",
    # model parallel pipelines
    "pipeline_balance", "pipeline_devices", "pipeline_encoder_balance", "pipeline_encoder_devices",
    "pipeline_decoder_balance", "pipeline_decoder_devices",
})

#: An OmegaConf reference to another key of the same config: ``${common.fp16}``, ``${..label_rate}``.
_NODE_REFERENCE = re.compile(r"\$\{\.*[\w-]+(?:\.[\w-]+|\[\d+\])*\}")

#: Limits that keep a literal from exhausting memory (``[0] * 10**12``) or time.
MAX_NODES = 2000
MAX_ITEMS = 100_000
MAX_STRING = 100_000


class UnsafeLiteralError(ValueError):
    """A string that is not a plain literal; the message says which construct was refused."""


class LiteralSyntaxError(UnsafeLiteralError):
    """Not Python at all (a path, a sentence): ``eval`` would fail on it before running anything."""


def parse_literal(text: str) -> Any:
    """The value of ``text`` if it is a plain literal expression, computed without ``eval``.

    Raises:
        UnsafeLiteralError: a syntax error, a construct other than constants, tuples, lists, dicts,
            unary ``+``/``-`` on numbers and ``+``/``*`` of those, or a result over the size limits.
    """
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise LiteralSyntaxError(f"not a Python literal ({err.msg})") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise UnsafeLiteralError(f"more than {MAX_NODES} syntax nodes")
    return _value(tree.body)


def _value(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant):
        if node.value is Ellipsis or isinstance(node.value, bytes):
            raise UnsafeLiteralError(f"constant {node.value!r} is not allowed")
        return _sized(node.value)
    if isinstance(node, ast.Tuple):
        return _sized(tuple(_value(e) for e in node.elts))
    if isinstance(node, ast.List):
        return _sized([_value(e) for e in node.elts])
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise UnsafeLiteralError("'**' unpacking is not allowed")
        return _sized({_value(k): _value(v) for k, v in zip(node.keys, node.values)})
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        operand = _value(node.operand)
        if not _is_number(operand):
            raise UnsafeLiteralError("unary +/- applies to numbers only")
        return operand if isinstance(node.op, ast.UAdd) else -operand
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
        return _binary(node.op, _value(node.left), _value(node.right))
    raise UnsafeLiteralError(f"{type(node).__name__} is not allowed (only literals, tuples, lists, dicts, + and *)")


def _binary(op: ast.operator, left: Any, right: Any) -> Any:
    if _is_number(left) and _is_number(right):
        return left + right if isinstance(op, ast.Add) else left * right
    if isinstance(op, ast.Add):
        if type(left) is type(right) and isinstance(left, (list, tuple, str)):
            _check_size(len(left) + len(right))
            return left + right
        raise UnsafeLiteralError(f"cannot add {type(left).__name__} and {type(right).__name__}")
    sequence, count = (left, right) if isinstance(right, int) and not isinstance(right, bool) else (right, left)
    if isinstance(sequence, (list, tuple, str)) and isinstance(count, int) and not isinstance(count, bool):
        _check_size(len(sequence) * max(count, 0))
        return sequence * count
    raise UnsafeLiteralError(f"cannot multiply {type(left).__name__} and {type(right).__name__}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, complex)) and not isinstance(value, bool)


def _check_size(size: int) -> None:
    if size > MAX_ITEMS:
        raise UnsafeLiteralError(f"the value would have {size} items (limit {MAX_ITEMS})")


def _sized(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_STRING:
        raise UnsafeLiteralError(f"a string of {len(value)} characters (limit {MAX_STRING})")
    return value


def unsafe_values(config: Any, prefix: str = "") -> List[Tuple[str, str, str]]:
    """Every ``(dotted key, value, reason)`` in ``config`` that must not reach fairseq.

    ``config`` is a loaded checkpoint's config in any of its forms (dicts, lists, ``argparse``
    namespaces, OmegaConf containers). Refused: a string under an :data:`EVALUATED_KEYS` key that is
    Python but not a plain literal (a string that is not Python at all, like a path under a common
    key name, cannot run: ``eval`` fails on it), and any OmegaConf interpolation other than a plain
    reference to another key (``${common.fp16}``).
    """
    found = []
    for key, value in _items(config, prefix):
        if isinstance(value, str):
            if "${" in _NODE_REFERENCE.sub("", value):
                found.append((key, value, "OmegaConf resolver interpolations (${name:...}) are not resolved "
                                          "from a loaded file: they would read this machine"))
            elif key.rsplit(".", 1)[-1] in EVALUATED_KEYS:
                try:
                    parse_literal(value)
                except LiteralSyntaxError:
                    pass
                except UnsafeLiteralError as err:
                    found.append((key, value, str(err)))
        else:
            found.extend(unsafe_values(value, key))
    return found


def _items(config: Any, prefix: str) -> Iterator[Tuple[str, Any]]:
    """``(dotted key, value)`` of one container level; nothing for leaves that are not containers."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(config, (DictConfig, ListConfig)):
        # Raw values: interpolations stay unresolved strings, so nothing is read from the environment.
        config = OmegaConf.to_container(config, resolve=False)
    if isinstance(config, argparse.Namespace):
        config = vars(config)
    if isinstance(config, Mapping):
        for key, value in config.items():
            yield (f"{prefix}.{key}" if prefix else str(key)), value
    elif isinstance(config, (list, tuple)):
        for position, value in enumerate(config):
            yield f"{prefix}[{position}]", value
