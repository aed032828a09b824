"""Pin the registry's champions into the BentoML model store, so a built Bento serves without MLflow.

``pin_champions(settings)`` downloads the ``@champion`` bundle of every target and saves them together as one
BentoML model, ``propensity_champions``, laid out like a ``PROPENSITY_MODEL_DIR`` (``<target>/bundle.json`` and
``<target>/booster.txt``), labelled with the registry versions. ``bentofile.yaml`` lists
``propensity_champions:latest``, so ``bentoml build`` packs it; a service started from the Bento reads it with
:func:`pinned_model_dir` and never contacts the registry::

    python -c "from propensity.config import load_settings; from propensity.service.pin import pin_champions; \\
               print(pin_champions(load_settings()))"
    bentoml build            # in the project root
    bentoml serve propensity_service:latest
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from propensity.config import Settings
from serving.http.models import bundle_dir
from training.bundle import TARGETS

MODEL_NAME = "propensity_champions"


def pin_champions(settings: Settings, targets: tuple[str, ...] = TARGETS, dest: Path | None = None) -> Path:
    """Copy every target's ``@champion`` bundle into a new ``propensity_champions`` BentoML model.

    Returns the model's directory (usable as ``PROPENSITY_MODEL_DIR``). With ``dest`` the bundles are also
    copied to ``dest/<target>/``. Raises :class:`training.registry.RegistryError` when a target has no champion.
    """
    import bentoml

    from training.registry import CHAMPION, Registry

    registry = Registry(settings.tracking_uri, settings.artifact_root)
    versions: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="pin-champions-") as tmp:
        staged = Path(tmp)
        for target in targets:
            (staged / "download" / target).mkdir(parents=True)
            downloaded, version = registry.download(target, CHAMPION, dest=staged / "download" / target)
            path = bundle_dir(downloaded)
            out = staged / "bundles" / target
            out.mkdir(parents=True)
            shutil.copy2(path / "booster.txt", out / "booster.txt")
            doc = json.loads((path / "bundle.json").read_text())
            doc["meta"] = {**doc.get("meta", {}), "version": version}  # the pinned copy remembers its version
            (out / "bundle.json").write_text(json.dumps(doc, indent=1))
            versions[target] = version
        labels = {t: f"v{v}" for t, v in versions.items()}
        with bentoml.models.create(
            MODEL_NAME, labels=labels, metadata={"registry": settings.tracking_uri, "versions": versions}
        ) as model:
            shutil.copytree(staged / "bundles", model.path, dirs_exist_ok=True)
            tag = model.tag
        if dest is not None:
            shutil.copytree(staged / "bundles", dest, dirs_exist_ok=True)
    return Path(bentoml.models.get(tag).path)


def pinned_model_dir(tag: str = f"{MODEL_NAME}:latest") -> Path:
    """The directory of the pinned champions in the current BentoML model store (inside a Bento: its own)."""
    import bentoml

    return Path(bentoml.models.get(tag).path)
