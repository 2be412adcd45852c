"""The Firestore adapters' package: each store keeps to its own documents' helpers."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "functions" / "adapters" / "firestore"


def reaches_into_another_object(source: str) -> list[str]:
    """`self.<attr>._<private>`: a private member of an object this one holds."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and isinstance(node.value, ast.Attribute)
                and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"):
            found.append(f"self.{node.value.attr}.{node.attr}")
    return found


def test_the_check_finds_a_private_reach():
    assert reaches_into_another_object("def f(self):\n    return self.jobs._items('j')\n") == ["self.jobs._items"]
    assert reaches_into_another_object("def f(self):\n    return self._items('j')\n") == []


def test_no_store_uses_a_private_member_of_another():
    for module in sorted(PACKAGE.glob("*.py")):
        assert reaches_into_another_object(module.read_text()) == [], module.name


def test_every_module_says_what_it_is_for():
    for module in sorted(PACKAGE.glob("*.py")):
        assert ast.get_docstring(ast.parse(module.read_text())), module.name
