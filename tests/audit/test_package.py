"""The package's lazy exports: every name resolves, and importing loads no MXNet."""
import subprocess
import sys

import mxprivacy.audit as audit


def test_every_exported_name_resolves_to_its_module_object():
    for name in audit.__all__:
        module = sys.modules.get(f"mxprivacy.audit.{audit._LAZY[name]}") or __import__(
            f"mxprivacy.audit.{audit._LAZY[name]}", fromlist=[name])
        assert getattr(audit, name) is getattr(module, name), name


def test_importing_the_package_and_its_numpy_parts_loads_neither_mxnet_nor_sklearn():
    code = ("import sys, mxprivacy.audit as a; a.CanaryScoreAuditor; a.lira_offline_scores; "
            "a.make_canaries; print('mxnet' in sys.modules, 'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
