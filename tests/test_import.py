"""``import lmm_jax`` loads lmm_jax's errors only (not even JAX); the rest of
the package and its heavy dependencies (JAX, formulaic, pandas, scipy,
matplotlib, tqdm) load when a name that needs them is first used.

Each case runs in a fresh Python process: the test process has long imported
everything.
"""

from pathlib import Path

import lmm_jax

from tests.helpers import run_python

HEAVY = ["formulaic", "pandas", "scipy.special", "scipy.stats", "scipy.optimize", "scipy.linalg", "matplotlib", "tqdm"]
# what `import lmm_jax` itself runs: the package's lazy names, its errors and the fork guard (its at-fork hook must
# be in place before a fork; it records whether JAX had started, nothing else): nothing that acts on the process
LOADED_ON_IMPORT = ["lmm_jax", "lmm_jax.errors", "lmm_jax.runtime", "lmm_jax.runtime.fork"]


def _run(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; check that it imported this lmm_jax."""
    got = run_python(code)
    assert Path(got.pop("file")).resolve() == Path(lmm_jax.__file__).resolve()
    return got


LOADED = "[m for m in sys.modules if m.startswith('lmm_jax')], [m for m in {heavy} if m in sys.modules]"


def test_import_loads_no_heavy_dependencies():
    got = _run(f"""
import json, sys
import lmm_jax
jax_before = "jax" in sys.modules
import jax
from jax._src import xla_bridge
own, heavy = {LOADED.format(heavy=HEAVY)}
print(json.dumps({{"file": lmm_jax.__file__, "own": sorted(own), "heavy": heavy,
                  "x64": jax.config.read("jax_enable_x64"), "jax_before": jax_before,
                  "backends": xla_bridge.backends_are_initialized()}}))
""")
    assert got["heavy"] == []
    assert got["own"] == LOADED_ON_IMPORT
    assert got["jax_before"] is False and got["x64"] is False
    assert got["backends"] is False


def test_every_public_name_resolves():
    got = _run("""
import inspect, json
import lmm_jax
names = {n: type(getattr(lmm_jax, n)).__name__ for n in lmm_jax.__all__}
star = {}
exec("from lmm_jax import *", star)
print(json.dumps({"file": lmm_jax.__file__, "names": names, "star": sorted(n for n in star if n != "__builtins__"),
                  "dir": sorted(set(lmm_jax.__all__) - set(dir(lmm_jax))),
                  "load": lmm_jax.datasets.load("sleepstudy").shape,
                  "submodule": inspect.ismodule(lmm_jax.build.design)}))
""")
    assert sorted(got["names"]) == sorted(lmm_jax.__all__)
    assert got["names"]["datasets"] == "module"
    assert got["names"]["fit"] == got["names"]["anova"] == got["names"]["simulate"] == "function"
    assert got["names"]["LMM"] == got["names"]["LMMResult"] == "type"
    assert got["star"] == sorted(lmm_jax.__all__)
    assert got["dir"] == []
    assert got["load"] == [180, 3]
    assert got["submodule"] is True


def test_functions_named_like_their_module_stay_functions():
    # lmm_jax.anova and lmm_jax.simulate are functions even when lmm_jax's own code imports their modules first
    # (the public simulate is lmm_jax.planning's, which adds planned designs and new data)
    got = _run("""
import json, sys
import lmm_jax
from lmm_jax.inference.anova import anova_table
from lmm_jax.batched.bootstrap import BootstrapResult
import lmm_jax.batched.simulate
print(json.dumps({"file": lmm_jax.__file__,
                  "anova": lmm_jax.anova is sys.modules["lmm_jax.inference.anova"].anova,
                  "simulate": lmm_jax.simulate is sys.modules["lmm_jax.planning"].simulate}))
""")
    assert got == {"anova": True, "simulate": True}


def test_a_fit_loads_what_it_uses_and_its_inference_loads_on_first_use():
    got = _run(f"""
import json, sys
import lmm_jax
fit = lmm_jax.fit("Reaction ~ Days + (Days | Subject)", lmm_jax.datasets.load("sleepstudy"))
after_fit = {LOADED.format(heavy=HEAVY)}
summary = fit.summary()
after_text = {LOADED.format(heavy=HEAVY)}
anova = lmm_jax.anova(fit)
wald = fit.confint(method="wald")
after_summary = {LOADED.format(heavy=HEAVY)}
print(json.dumps({{"file": lmm_jax.__file__, "after_fit": after_fit, "after_text": after_text,
                  "after_summary": after_summary,
                  "summary": summary, "anova_rows": list(anova.index), "wald_rows": len(wald)}}))
""")
    own, heavy = got["after_fit"]
    assert "pandas" in heavy and "formulaic" not in heavy   # sleepstudy's plain columns are read without formulaic
    assert not {"scipy.special", "scipy.stats", "scipy.optimize", "matplotlib", "tqdm"} & set(heavy)
    # lmm_jax.inference.satterthwaite comes with the fit, which compiles its kernel ahead of summary()
    assert not {"lmm_jax.inference.tests", "lmm_jax.inference.anova", "lmm_jax.report.plotting"} & set(own)
    own, heavy = got["after_text"]          # summary(): Satterthwaite's t tests take lmm_jax.distributions' t_sf
    assert "lmm_jax.inference.satterthwaite" in own and not {"scipy.special", "scipy.stats", "scipy.optimize"} & set(heavy)
    own, heavy = got["after_summary"]
    assert {"lmm_jax.inference.satterthwaite", "lmm_jax.inference.tests",
            "lmm_jax.inference.anova", "formulaic"} <= set(heavy) | set(own)     # anova reads the fixed part's spec
    assert "scipy.stats" not in heavy       # the tests' p-values and quantiles: lmm_jax.distributions, scipy.special
    assert "REML criterion at convergence: 1743.6283" in got["summary"]
    assert got["anova_rows"] == ["Days"]
    assert got["wald_rows"] == 6
