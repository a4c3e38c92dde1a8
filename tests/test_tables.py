"""itr_lib.tables: table builders and their Markdown copies."""


def test_markdown_tables_escape_pipes_in_labels():
    import pandas as pd
    from itr_lib.tables import to_markdown
    md = to_markdown(pd.DataFrame({"variant": ["tgdt | triplet"], "mr": [1.5]}), index=False)
    row = md.splitlines()[-1]
    assert "tgdt \\| triplet" in row and row.count("|") - row.count("\\|") == 3  # 2 cells: 3 unescaped pipes


def test_schedule_table_compares_common_seeds_on_val():
    import pandas as pd
    from itr_lib.tables import schedule_table
    rows = [dict(dataset="x", method="baseline", base_loss="infonce", epochs=e, seed=s, val_rsum=v, mr=m,
                 best_epoch=b, train_seconds=t)
            for e, s, v, m, b, t in [(3, 0, 60.0, 10.0, 2, 60), (6, 0, 72.0, 11.0, 5, 120), (6, 1, 90.0, 15.0, 4, 120),
                                     (3, 1, 66.0, 12.0, 2, 60)]]
    rows.append(dict(rows[0], method="selfalign", val_rsum=600.0))  # another method: ignored
    rows.append(dict(rows[0], epochs=10, seed=2))  # a schedule no seed shares: leaves no common seed -> empty
    t = schedule_table(pd.DataFrame(rows[:5]), "x")
    assert list(t.epochs) == [3, 6] and list(t.seeds) == ["0,1", "0,1"]
    assert list(t.val_mr) == [10.5, 13.5]  # mean val rsum / 6
    assert list(t.test_mr) == [11.0, 13.0] and list(t.best_epoch) == ["3,3", "6,5"]
    assert schedule_table(pd.DataFrame(rows), "x").empty
