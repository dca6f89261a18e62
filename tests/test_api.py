"""The arcgis.learn-shaped API and show_batch."""

from __future__ import annotations

import pytest

from sparsecover import UnetClassifier, prepare_data


@pytest.mark.usefixtures("short_spectral_fit")
def test_prepare_fit_metrics_save(train_chips, tmp_path):
    data = prepare_data(train_chips, batch_size=8, imagery_type="ms", val_fraction=0.34)
    assert data.c == 3 and data.classes == ["class1", "class2", "class3"]
    fig_path = tmp_path / "batch.png"
    data.show_batch(rows=1, columns=3, path=fig_path)
    assert fig_path.stat().st_size > 5000
    model = UnetClassifier(data, backbone="resnet18", ignore_classes=[0], quiet=True)
    run = model.fit(1, lr=1e-3, out=tmp_path / "run")
    table = model.per_class_metrics()
    assert list(table.columns) == ["class1", "class2", "class3"]
    assert list(table.index) == ["precision", "recall", "f1_score"]
    assert "mean" in model.mIOU()
    model.show_results(rows=2, path=tmp_path / "results.png")
    assert (tmp_path / "results.png").stat().st_size > 5000
    saved = model.save(tmp_path / "models" / "landcover")
    assert saved.name == "landcover.sparsecover" and saved.is_file()
    from sparsecover.predict import load_model

    assert load_model(saved).class_values == [1, 2, 3]
    assert UnetClassifier.load(saved).meta["encoder"] == "resnet18"
    assert run == tmp_path / "run"
