"""itr_lib.evaluate: the command line that scores any checkpoint."""
import json

import pytest

from itr_lib.train import train


def test_evaluate_cli_scores_a_checkpoint_and_reports_bad_paths(tmp_path, mini_cache, fixture_root, capsys, mini_cfg):
    from itr_lib.evaluate import main
    cfg = mini_cfg(epochs=1)
    out = train(cfg)
    root, _ = mini_cache
    rc = main(["--checkpoint", str(tmp_path / "run" / "best.pt"), "--data-root", str(fixture_root),
               "--dataset", "mini", "--split", "test", "--cache-dir", str(root)])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["standard"] == pytest.approx(out["test"]["standard"])
    assert printed["n_images"] == 2 and printed["n_texts"] == 10
    rc = main(["--checkpoint", str(tmp_path / "nope.pt"), "--dataset", "mini", "--data-root", str(fixture_root)])
    err = capsys.readouterr().err
    assert rc == 2 and "does not exist" in err and "results/<profile>/runs/" in err
    (tmp_path / "notes.pt").write_text('{"not": "a checkpoint"}')
    rc = main(["--checkpoint", str(tmp_path / "notes.pt"), "--dataset", "mini", "--data-root", str(fixture_root)])
    err = capsys.readouterr().err
    assert rc == 2 and "is not a readable checkpoint" in err and "Traceback" not in err
    rc = main(["--checkpoint", str(tmp_path / "run" / "best.pt"), "--dataset", "nosuch", "--data-root",
               str(fixture_root), "--cache-dir", str(root)])
    err = capsys.readouterr().err
    assert rc == 2 and "datasets under" in err and "mini" in err  # the datasets that do exist are listed
