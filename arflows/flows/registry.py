r"""Flow families by name: :func:`flow_classes`, :func:`flow_options` and :func:`build`.

What the command line, the scikit-learn estimator and a config file use to turn a name such as
``"nsf"`` into a flow.

Example:
    >>> flow = build("NSF", 5, transforms=3, bins=8)
    >>> type(flow).__name__, flow.features, flow.context
    ('NSF', 5, 0)
"""

from __future__ import annotations

__all__ = ["build", "flow_classes", "flow_options"]

import importlib
import inspect
import re

from .lazy import Flow


def flow_classes() -> dict[str, type[Flow]]:
    """The flow classes of :mod:`arflows.flows` by lower-case name (``"maf"``, ``"nsf"``, ...).

    Looked up in that package's namespace, so a flow family added there reaches the command
    line and the scikit-learn estimator unchanged.
    """
    namespace = vars(importlib.import_module(__package__))
    return {
        name.lower(): obj
        for name, obj in namespace.items()
        if isinstance(obj, type) and issubclass(obj, Flow) and obj is not Flow
    }


def _family(name: object) -> type[Flow]:
    if not isinstance(name, str):
        raise TypeError(f"expected a flow name, got {type(name).__name__}")
    classes = flow_classes()
    cls = classes.get(name.lower())
    if cls is None:
        raise ValueError(f"unknown flow {name!r}; available: {', '.join(sorted(classes))}")
    return cls


def flow_options(family: str | type[Flow]) -> list[str]:
    """The keyword options a flow family's constructor names, besides ``features`` and ``context``.

    Subclasses often pass ``**kwargs`` on to their parent: the parents' options count too, up
    to (not including) :class:`Flow`, whose arguments are modules rather than options. A class
    whose ``**kwargs`` go to another family's layers names that family in an ``options_from``
    class attribute (as :class:`~arflows.flows.NSF` does with :class:`~arflows.flows.MAF`), and
    that family's options count too.
    Options that a family passes on to its layers (such as :class:`MAF`'s MADE options) are
    not listed.

    Args:
        family: A flow name (case-insensitive) or class.

    Returns:
        The option names, the family's own first.

    Raises:
        ValueError: For an unknown name.
    """
    cls = family if isinstance(family, type) else _family(family)
    names: list[str] = []
    for klass in cls.__mro__:
        if klass is Flow or not issubclass(klass, Flow):
            break
        if "__init__" not in vars(klass):
            continue
        params = list(inspect.signature(klass.__init__).parameters.values())[1:]  # self
        names += [
            p.name
            for p in params
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
            and p.name not in ("features", "context")
            and p.name not in names
        ]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
        source = vars(klass).get("options_from")
        if source is not None:
            names += [name for name in flow_options(source) if name not in names]
            break
    return names


def build(name: str, features: int, context: int = 0, **options: object) -> Flow:
    r"""Builds a flow by family name: ``build("nsf", 5, transforms=3, bins=8)``.

    Args:
        name: The family, case-insensitive: a key of :func:`flow_classes` (``"maf"``,
            ``"iaf"``, ``"nsf"``, ``"realnvp"``, ...).
        features: The number of features :math:`D`.
        context: The context size :math:`C` (0 for unconditional).
        options: The family's options (see :func:`flow_options`), and those it passes on to
            its layers (for example ``residual=True`` for a MAF's MADEs).

    Returns:
        The flow.

    Raises:
        ValueError: For an unknown name, or an option the family does not take.
    """
    cls = _family(name)
    try:
        return cls(features, context, **options)
    except TypeError as error:
        # An unknown keyword surfaces as the TypeError of whichever layer received it.
        found = re.search(r"unexpected keyword argument '(\w+)'", str(error))
        named = flow_options(cls)
        if found is None or found.group(1) not in options or found.group(1) in named:
            raise
        raise ValueError(
            f"{name.lower()} takes no {found.group(1)!r} option; it takes: {', '.join(named)} "
            f"(and the options it passes on to its layers; see arflows.flows.{cls.__name__})"
        ) from None
