"""lmms-eval's entry point for the ``mmmamba`` model (pyproject: ``[project.entry-points."lmms_eval.models"]``).

lmms-eval loads every entry point of its ``lmms_eval.models`` group at start-up, whichever model a run uses. This
module therefore lives outside the ``mmmamba_bench`` package and imports nothing of it: importing ``mmmamba_bench``
registers its checkpoint families with transformers' Auto classes (``internvl_chat`` among them), which must not
happen in an lmms-eval run of another model. lmms-eval imports the adapter class from its dotted path only when
``--model mmmamba`` is asked for.
"""

MODEL_ID = "mmmamba"
ADAPTER_CLASS = "mmmamba_bench.eval.adapter.MMMambaLMM"


def manifest():
    """The payload lmms-eval's model registry reads: a ``ModelManifest``."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=ADAPTER_CLASS, aliases=("mmmamba_bench",))
