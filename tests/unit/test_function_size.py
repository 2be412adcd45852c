"""Functions in functions/ stay short: at most 60 lines and 6 parameters besides self, cls and
a `deps` object. None is over any more; KNOWN is where an exception would be listed by name, so
that it could only shrink: a new offender fails, and so does a listed one that was fixed but not
struck off."""
import ast
import pathlib

FUNCTIONS = pathlib.Path(__file__).parents[2] / "functions"
MAX_LINES = 60
MAX_PARAMS = 6
NOT_COUNTED = {"self", "cls", "deps"}

# (path under functions/, function name): still too long or taking too many parameters.
KNOWN: set[tuple[str, str]] = {
    # Keyword-only resume point (start, first_number, first_index, header) plus the prompt limit:
    # each a plain value a checkpoint stores, clearer than one bundle.
    ("sources.py", "read_lines"),
}


def _params(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    a = node.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
    names += [x.arg for x in (a.vararg, a.kwarg) if x is not None]
    return [n for n in names if n not in NOT_COUNTED]


def offenders() -> set[tuple[str, str]]:
    found = set()
    for path in sorted(FUNCTIONS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES or len(_params(node)) > MAX_PARAMS:
                    found.add((path.relative_to(FUNCTIONS).as_posix(), node.name))
    return found


def test_no_new_function_is_too_long_or_takes_too_many_parameters():
    assert offenders() - KNOWN == set()


def test_the_known_offenders_are_still_offenders():
    assert KNOWN - offenders() == set(), "fixed: strike it off KNOWN"


def test_the_entry_points_and_the_http_layer_have_none():
    assert not {name for path, name in offenders() if path in ("main.py", "http_api.py", "openapi.py")}
