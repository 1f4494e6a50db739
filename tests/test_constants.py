"""Token ids and vocabulary sizes of the public models are defined once, in
dmkernels/constants.py: no other module of the package spells them as numbers."""
import ast
from pathlib import Path

from dmkernels import constants

PACKAGE = Path(constants.__file__).resolve().parent
IDS = {v for k, v in vars(constants).items() if k.isupper() and isinstance(v, int)}


def test_no_module_retypes_a_public_token_id():
    assert {126336, 126081, 126348, 126464, 152064} <= IDS  # the scan below looks for these
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == Path(constants.__file__).resolve():
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and type(node.value) is int and node.value in IDS:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {node.value}")
    assert not found, "use dmkernels.constants instead of:\n" + "\n".join(found)
