"""Which TensorRT names, and which calls, the TensorRT-facing modules use: found by following objects.

The old walk trusted variable names (``config``, ``engine``...): a chained call
(``config.get_timing_cache().serialize()``) or an ITensor member (``t.name``) went unseen.
This one infers types the way the objects flow: from ``import tensorrt`` (and any value
named ``trt``, the module's alias by convention), through every TensorRT call whose pybind
signature returns a TensorRT class, into variables, ``self`` attributes, dataclass fields,
list elements, loop and comprehension variables, function parameters (from every call site
in the three modules) and return values, to a fixed point. Each attribute of a typed object
is a reference; each call of a TensorRT method is kept with its arguments, to be bound
against the release's signature. Code inside a class with ``SERVES = (...)`` is checked
against those releases only.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.runtime.backends.fake_tensorrt import VERSIONS, load_surface

MODULE = ("module",)


@dataclass(frozen=True)
class Ref:
    cls: str  # a class (or function) of the tensorrt module
    member: str | None
    serves: tuple[str, ...]
    where: str  # file:line


@dataclass(frozen=True)
class Call:
    cls: str
    method: str
    nargs: int
    keywords: tuple[str, ...]
    serves: tuple[str, ...]
    where: str


def _serves(node: ast.ClassDef) -> tuple[str, ...] | None:
    for stmt in node.body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "SERVES" for t in stmt.targets):
            return tuple(ast.literal_eval(stmt.value))
    return None


def _returns(signature: str) -> str | None:
    """The TensorRT class a pybind signature returns (``-> tensorrt_bindings.tensorrt.IHostMemory``)."""
    ret = signature.rpartition("->")[2].strip()
    for prefix in ("tensorrt_bindings.tensorrt.", "tensorrt.", "nvinfer1::", "nvonnxparser::"):
        if ret.startswith(prefix):
            name = ret[len(prefix):]
            return {"IParserError": "ParserError", "IEngineInspector": "EngineInspector"}.get(name, name)
    if ret.startswith(("List[tensorrt_bindings.tensorrt.", "collections.abc.Sequence[tensorrt_bindings.tensorrt.")):
        return None  # Dims lists: not objects with members we use
    return None


class Program:
    """The functions and classes of several modules, and the types that flow between them."""

    def __init__(self, paths: list[Path], root: Path) -> None:
        self.functions: dict[str, list[tuple[ast.FunctionDef, str | None, tuple[str, ...], str]]] = {}
        self.classes: dict[str, ast.ClassDef] = {}
        self.fields: dict[tuple[str, str], Any] = {}  # (our class, attribute) -> type
        self.params: dict[tuple[int, str], Any] = {}  # (id(function node), parameter) -> type
        self.results: dict[int, Any] = {}  # id(function node) -> return type
        self.refs: set[Ref] = set()
        self.calls: set[Call] = set()
        self.bases: set[Ref] = set()
        self.assigned: set[Ref] = set()  # properties of TensorRT objects the code sets
        self.surfaces = {v: load_surface(v)["classes"] for v in VERSIONS}
        self.trees = [(p.relative_to(root).as_posix(), ast.parse(p.read_text())) for p in paths]
        for name, tree in self.trees:
            self._index(tree, None, VERSIONS, name)
        for _ in range(8):  # to a fixed point (types only grow)
            before = (len(self.params), len(self.results), len(self.fields))
            self.refs, self.calls, self.assigned = set(), set(), set()
            for name, fn_list in list(self.functions.items()):
                for fn, owner, serves, file in fn_list:
                    self._walk_function(fn, owner, serves, file)
            if (len(self.params), len(self.results), len(self.fields)) == before:
                break
        self.refs |= self.bases

    def _index(self, node: ast.AST, owner: str | None, serves: tuple[str, ...], file: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                self.classes[child.name] = child
                for base in child.bases:  # class RecordingLogger(trt.ILogger)
                    if isinstance(base, ast.Attribute) and isinstance(base.value, ast.Name) and base.value.id == "trt":
                        self.bases.add(Ref(base.attr, None, serves, f"{file}:{base.lineno}"))
                self._index(child, child.name, _serves(child) or serves, file)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.functions.setdefault(child.name, []).append((child, owner, serves, file))
                self._index(child, owner, serves, file)

    # -- types -------------------------------------------------------------------------
    def _signatures(self, cls: str, member: str) -> list[str]:
        for version in VERSIONS:
            info = self.surfaces[version].get(cls, {}).get(member)
            if info and info["signatures"]:
                return list(info["signatures"])
        return []

    def _is_class(self, name: str) -> bool:
        return any(name in s for s in self.surfaces.values())

    def expr(self, node: ast.AST, env: dict[str, Any], ctx: tuple[str | None, tuple[str, ...], str]) -> Any:
        """The type of ``node``: MODULE, ("trt", Class), ("class", Class), ("obj", OurClass),
        ("method", Class, name), ("ours", function name), ("list", type), or None."""
        owner, serves, file = ctx
        where = f"{file}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Name):
            if node.id in env:
                return env[node.id]
            if node.id == "trt" or node.id == "tensorrt":
                return MODULE
            if node.id in self.classes:
                return ("ourclass", node.id)
            if node.id in self.functions:
                return ("ours", node.id)
            return None
        if isinstance(node, ast.Attribute):
            base = self.expr(node.value, env, ctx)
            attr = node.attr
            if base == MODULE:
                if attr.startswith("__"):
                    return None
                self.refs.add(Ref(attr, None, serves, where))
                return ("class", attr) if self._is_class(attr) else ("tfunc", attr)
            if isinstance(base, tuple) and base[0] in ("class", "trt"):
                if attr.startswith("__"):
                    return None
                self.refs.add(Ref(base[1], attr, serves, where))
                if base[0] == "trt" and self._signatures(base[1], attr):
                    return ("method", base[1], attr)
                return None
            if isinstance(base, tuple) and base[0] == "obj":
                if (base[1], attr) in self.fields:
                    return self.fields[(base[1], attr)]
                return ("ourmethod", attr)
            return None
        if isinstance(node, ast.Call):
            func = self.expr(node.func, env, ctx)
            args = [self.expr(a, env, ctx) for a in node.args]
            kwargs = {k.arg: self.expr(k.value, env, ctx) for k in node.keywords if k.arg}
            if isinstance(func, tuple) and func[0] == "class":
                if self._signatures(func[1], "__init__"):
                    self.calls.add(Call(func[1], "__init__", len(node.args),
                                        tuple(k.arg for k in node.keywords if k.arg), serves, f"{file}:{node.lineno}"))
                return ("trt", func[1])
            if isinstance(func, tuple) and func[0] == "method":
                self.calls.add(Call(func[1], func[2], len(node.args), tuple(k.arg for k in node.keywords if k.arg),
                                    serves, f"{file}:{node.lineno}"))
                for sig in self._signatures(func[1], func[2]):
                    ret = _returns(sig)
                    if ret:
                        return ("trt", ret)
                return None
            if isinstance(func, tuple) and func[0] == "ours":
                return self._call_ours(self.functions.get(func[1], []), args, kwargs, skip_self=False)
            if isinstance(func, tuple) and func[0] == "ourmethod":
                return self._call_ours([f for f in self.functions.get(func[1], []) if f[1]], args, kwargs,
                                       skip_self=True)
            if isinstance(func, tuple) and func[0] == "ourclass":
                return self._construct(func[1], args, kwargs)
            for arg in node.args:  # list(x), tuple(x), range(...): a list of the same elements
                if isinstance(node.func, ast.Name) and node.func.id in ("list", "tuple", "sorted"):
                    return self.expr(arg, env, ctx)
            return None
        if isinstance(node, (ast.ListComp, ast.GeneratorExp, ast.SetComp)):
            inner = dict(env)
            for gen in node.generators:
                self._bind(gen.target, self._element(self.expr(gen.iter, inner, ctx)), inner)
                for cond in gen.ifs:
                    self.expr(cond, inner, ctx)
            return ("list", self.expr(node.elt, inner, ctx))
        if isinstance(node, ast.DictComp):
            inner = dict(env)
            for gen in node.generators:
                self._bind(gen.target, self._element(self.expr(gen.iter, inner, ctx)), inner)
            self.expr(node.key, inner, ctx)
            self.expr(node.value, inner, ctx)
            return None
        if isinstance(node, (ast.List, ast.Tuple)):
            kinds = [self.expr(e, env, ctx) for e in node.elts]
            known = [k for k in kinds if k is not None]
            return ("list", known[0]) if known else None
        if isinstance(node, ast.Subscript):
            self.expr(node.slice, env, ctx)
            return self._element(self.expr(node.value, env, ctx))
        if isinstance(node, ast.BoolOp):
            kinds = [self.expr(v, env, ctx) for v in node.values]
            return next((k for k in kinds if k is not None), None)
        if isinstance(node, ast.IfExp):
            self.expr(node.test, env, ctx)
            a, b = self.expr(node.body, env, ctx), self.expr(node.orelse, env, ctx)
            return a if a is not None else b
        if isinstance(node, ast.Lambda):
            return None
        for child in ast.iter_child_nodes(node):
            self.expr(child, env, ctx)
        return None

    @staticmethod
    def _element(kind: Any) -> Any:
        return kind[1] if isinstance(kind, tuple) and kind[0] == "list" else None

    def _call_ours(self, targets: list[Any], args: list[Any], kwargs: dict[str, Any], skip_self: bool) -> Any:
        result = None
        for fn, owner, _serves_, _file in targets:
            names = [a.arg for a in fn.args.args]
            if owner and names and names[0] == "self":
                names = names[1:]
            for name, kind in [*zip(names, args), *kwargs.items()]:
                if kind is not None and name in names:
                    self.params.setdefault((id(fn), name), kind)
            result = result or self.results.get(id(fn))
        return result

    def _construct(self, cls: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        init = [f for f in self.functions.get("__init__", []) if f[1] == cls]
        if init:
            self._call_ours(init, args, kwargs, skip_self=True)
        else:  # a dataclass: positional arguments fill the annotated fields in order
            fields = [s.target.id for s in self.classes[cls].body
                      if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)]
            for name, kind in [*zip(fields, args), *kwargs.items()]:
                if kind is not None:
                    self.fields.setdefault((cls, name), kind)
        return ("obj", cls)

    def _bind(self, target: ast.AST, kind: Any, env: dict[str, Any], owner: str | None = None) -> None:
        if isinstance(target, ast.Name):
            if kind is not None:
                env[target.id] = kind
        elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
            if kind is not None and owner:
                self.fields.setdefault((owner, target.attr), kind)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for sub in target.elts:
                self._bind(sub, self._element(kind) if kind and kind[0] == "list" else None, env, owner)

    # -- statements --------------------------------------------------------------------
    def _walk_function(self, fn: ast.FunctionDef, owner: str | None, serves: tuple[str, ...], file: str) -> None:
        env: dict[str, Any] = {}
        for arg in fn.args.args:
            kind = self.params.get((id(fn), arg.arg))
            if arg.arg == "self" and owner:
                kind = ("obj", owner)
            if kind is not None:
                env[arg.arg] = kind
        ctx = (owner, serves, file)
        self._statements(fn.body, env, ctx, fn)

    def _statements(self, body: list[ast.stmt], env: dict[str, Any], ctx: Any, fn: ast.FunctionDef) -> None:
        for stmt in body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue  # walked on their own
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                for alias in stmt.names:
                    if alias.name == "tensorrt":
                        env[alias.asname or alias.name] = MODULE
                continue
            if isinstance(stmt, ast.Assign):
                kind = self.expr(stmt.value, env, ctx)
                for target in stmt.targets:
                    if isinstance(target, ast.Tuple) and isinstance(stmt.value, ast.Tuple):
                        for sub, val in zip(target.elts, stmt.value.elts):
                            self._bind(sub, self.expr(val, env, ctx), env, ctx[0])
                    else:
                        if isinstance(target, ast.Attribute):
                            self.expr(target, env, ctx)
                            holder = self.expr(target.value, env, ctx)
                            if isinstance(holder, tuple) and holder[0] == "trt":
                                self.assigned.add(Ref(holder[1], target.attr, ctx[1], f"{ctx[2]}:{stmt.lineno}"))
                        self._bind(target, kind, env, ctx[0])
                continue
            if isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
                self._bind(stmt.target, self.expr(stmt.value, env, ctx), env, ctx[0])
                continue
            if isinstance(stmt, ast.Return) and stmt.value is not None:
                kind = self.expr(stmt.value, env, ctx)
                if kind is not None:
                    self.results.setdefault(id(fn), kind)
                continue
            if isinstance(stmt, (ast.For, ast.AsyncFor)):
                self._bind(stmt.target, self._element(self.expr(stmt.iter, env, ctx)), env)
                self._statements(stmt.body, env, ctx, fn)
                self._statements(stmt.orelse, env, ctx, fn)
                continue
            if isinstance(stmt, (ast.With, ast.AsyncWith)):
                for item in stmt.items:
                    kind = self.expr(item.context_expr, env, ctx)
                    if item.optional_vars is not None:
                        self._bind(item.optional_vars, kind, env)
                self._statements(stmt.body, env, ctx, fn)
                continue
            if isinstance(stmt, (ast.If, ast.While)):
                self.expr(stmt.test, env, ctx)
                self._statements(stmt.body, env, ctx, fn)
                self._statements(stmt.orelse, env, ctx, fn)
                continue
            if isinstance(stmt, ast.Try):
                self._statements(stmt.body, env, ctx, fn)
                for handler in stmt.handlers:
                    self._statements(handler.body, env, ctx, fn)
                self._statements(stmt.orelse, env, ctx, fn)
                self._statements(stmt.finalbody, env, ctx, fn)
                continue
            for child in ast.iter_child_nodes(stmt):
                self.expr(child, env, ctx)


def analyse(paths: list[Path], root: Path) -> Program:
    return Program(paths, root)
