"""MultiTaskData: construction, schema replay for new rows, and one test per bad-input case."""

import numpy as np
import pandas as pd
import pytest
import torch

from bayesmtl import MultiTaskData


def frame():
    return pd.DataFrame({"school": ["b", "b", "a", "a", "c"], "x": [1.0, 2.0, 3.0, 4.0, 5.0],
                         "z": [0.0, 1.0, 0.0, 1.0, 0.5], "y": [1.0, 0.0, 1.0, 1.0, 0.0]})


def test_task_names_in_order_of_appearance_and_indices():
    d = MultiTaskData.from_frame(frame(), task="school", target="y")
    assert d.task_names == ["b", "a", "c"]
    assert d.task.tolist() == [0, 0, 1, 1, 2]
    assert d.feature_names == ["x", "z"]
    assert d.X.shape == (5, 2) and d.y.shape == (5,)
    assert d.rows_per_task().tolist() == [2, 2, 1]


def test_standardisation_recorded_and_replayed():
    d = MultiTaskData.from_frame(frame(), task="school", target="y", standardize=True)
    assert torch.allclose(d.X.mean(0), torch.zeros(2, dtype=d.dtype), atol=1e-12)
    new = d.prepare(pd.DataFrame({"school": ["a"], "x": [3.0], "z": [0.5]}))
    expected = (torch.tensor([3.0, 0.5], dtype=d.dtype) - d.feature_mean) / d.feature_scale
    assert torch.allclose(new.X[0], expected)
    back = d.to_frame()
    assert np.allclose(back["x"], frame()["x"])


def test_prepare_maps_unseen_tasks_after_known_ones():
    d = MultiTaskData.from_frame(frame(), task="school", target="y")
    new = d.prepare(pd.DataFrame({"school": ["zz", "a", "zz", "yy"], "x": [1.0] * 4, "z": [0.0] * 4}))
    assert new.task.tolist() == [3, 1, 3, 4]
    assert new.task_names == ["b", "a", "c", "zz", "yy"] and new.n_known_tasks == 3


def test_from_arrays_and_split_per_task():
    rng = np.random.default_rng(0)
    X, y, t = rng.standard_normal((40, 3)), rng.standard_normal(40), np.repeat([0, 1, 2, 3], 10)
    d = MultiTaskData.from_arrays(X, y, t, task_names=["p", "q", "r", "s"])
    train, test = d.split(test_fraction=0.3, seed=0)
    assert train.n_rows + test.n_rows == 40
    assert (train.rows_per_task() == 7).all() and (test.rows_per_task() == 3).all()
    assert train.task_names == test.task_names == ["p", "q", "r", "s"]


def test_csv_round_trip(tmp_path):
    p = tmp_path / "d.csv"
    frame().to_csv(p, index=False)
    d = MultiTaskData.from_csv(p, task="school", target="y", features=["x"])
    assert d.feature_names == ["x"] and d.n_tasks == 3


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("col", ["x", "y"])
def test_nan_or_inf_names_column_and_task(col):
    df = frame()
    df.loc[2, col] = np.nan if col == "x" else np.inf
    with pytest.raises(ValueError, match=rf"column '{col}'.*task 'a'"):
        MultiTaskData.from_frame(df, task="school", target="y")


def test_non_numeric_feature_names_column():
    df = frame()
    df["colour"] = ["red", "blue", "red", "red", "blue"]
    with pytest.raises(TypeError, match="feature column 'colour' is not numeric"):
        MultiTaskData.from_frame(df, task="school", target="y")


@pytest.mark.parametrize("kwargs,match", [
    ({"task": "district", "target": "y"}, "task column 'district' not found"),
    ({"task": "school", "target": "score"}, "target column 'score' not found"),
    ({"task": "school", "target": "y", "features": ["x", "w"]}, "feature column 'w' not found"),
])
def test_missing_column_is_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiTaskData.from_frame(frame(), **kwargs)


def test_fewer_than_two_tasks():
    df = frame().assign(school="only")
    with pytest.raises(ValueError, match="at least 2 tasks.*'school'"):
        MultiTaskData.from_frame(df, task="school", target="y")


def test_task_with_no_rows_is_named():
    with pytest.raises(ValueError, match="task 'ghost' has no rows"):
        MultiTaskData.from_arrays(np.ones((4, 1)), np.ones(4), np.array([0, 0, 1, 1]),
                                  task_names=["a", "b", "ghost"])


def test_shape_mismatch():
    with pytest.raises(ValueError, match="shape mismatch"):
        MultiTaskData.from_arrays(np.ones((4, 2)), np.ones(3), np.array([0, 0, 1, 1]))


def test_non_binary_target_for_bernoulli_names_task():
    df = frame()
    df.loc[4, "y"] = 2.0
    d = MultiTaskData.from_frame(df, task="school", target="y")
    with pytest.raises(ValueError, match="0/1 for a Bernoulli.*task 'c'"):
        d.check_target("bernoulli")


@pytest.mark.parametrize("value", [-1.0, 1.5])
def test_bad_counts_for_poisson_name_task(value):
    df = frame()
    df.loc[0, "y"] = value
    d = MultiTaskData.from_frame(df, task="school", target="y")
    with pytest.raises(ValueError, match="non-negative integer counts.*task 'b'"):
        d.check_target("poisson")


def test_missing_task_label():
    df = frame()
    df.loc[1, "school"] = None
    with pytest.raises(ValueError, match="task column 'school' has 1 missing or blank label"):
        MultiTaskData.from_frame(df, task="school", target="y")


def test_prepare_missing_feature_names_column():
    d = MultiTaskData.from_frame(frame(), task="school", target="y")
    with pytest.raises(ValueError, match="feature column 'z' not found"):
        d.prepare(pd.DataFrame({"school": ["a"], "x": [1.0]}))


# ---------------------------------------------------------------- silent cases of issue 17
def test_a_header_naming_a_column_twice_is_refused(tmp_path):
    for header, name in (("task,x0,x0,y", "x0"), ("task,x0,y,y", "y")):
        f = tmp_path / "d.csv"
        f.write_text(header + "\na,1,2,3\nb,2,3,4\n")
        with pytest.raises(ValueError, match=f"column '{name}' appears twice in the header"):
            MultiTaskData.from_csv(f, task="task", target="y")
    frame = pd.DataFrame([[1, 2, 3]], columns=["task", "x", "x"])
    with pytest.raises(ValueError, match="column 'x' appears more than once"):
        MultiTaskData.from_frame(frame, task="task", target="x")


def test_unreadable_files_are_named(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="empty.csv' is empty"):
        MultiTaskData.from_csv(tmp_path / "empty.csv", task="task", target="y")
    (tmp_path / "bin.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(ValueError, match="not a UTF-8 text CSV"):
        MultiTaskData.from_csv(tmp_path / "bin.csv", task="task", target="y")
    with pytest.raises(ValueError, match="is a folder"):
        MultiTaskData.from_csv(tmp_path, task="task", target="y")


def test_standardising_a_column_that_overflows_is_refused():
    df = pd.DataFrame({"task": ["a", "a", "b", "b"], "x": [1e300, -1e300, 1e300, 0.0], "y": [1.0, 2, 3, 4]})
    with pytest.raises(ValueError, match="feature 'x' is too large to standardise"):
        MultiTaskData.from_frame(df, task="task", target="y", standardize=True)


def test_blank_task_labels_are_refused_and_whole_number_labels_match():
    df = pd.DataFrame({"task": [1, 1, 2, 2], "x": [0.0, 1, 2, 3], "y": [1.0, 2, 3, 4]})
    data = MultiTaskData.from_frame(df, task="task", target="y")
    # a blank elsewhere makes pandas read the labels as floats: 1.0 is still task "1"
    assert data.prepare(pd.DataFrame({"task": [1.0, 2.0, 7.0], "x": [0.0, 1, 2]})).task_names == ["1", "2", "7"]
    for bad in ([1, None, 2], [1, " ", 2]):
        with pytest.raises(ValueError, match="task column 'task' has 1 missing or blank label.*row 1"):
            data.prepare(pd.DataFrame({"task": bad, "x": [0.0, 1, 2]}))
    with pytest.raises(ValueError, match="missing or blank"):
        MultiTaskData.from_frame(df.assign(task=["a", "", "b", "b"]), task="task", target="y")


def test_from_arrays_checks_what_from_frame_checks():
    X, y, t = np.random.default_rng(0).standard_normal((6, 1)), np.arange(6.0), np.array([0, 0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="noise must be positive"):
        MultiTaskData.from_arrays(X, y, t, noise=-np.ones(6))
    with pytest.raises(ValueError, match="trials must hold non-negative integers"):
        MultiTaskData.from_arrays(X, y, t, trials=np.full(6, 2.5))
    with pytest.raises(ValueError, match="X holds complex numbers"):
        MultiTaskData.from_arrays(X + 1j, y, t)
    with pytest.raises(ValueError, match="noise holds complex numbers"):
        MultiTaskData.from_arrays(X, y, t, noise=np.ones(6) * 1j)
    with pytest.raises(ValueError, match="y must hold numbers"):
        MultiTaskData.from_arrays(X, np.array(list("abcdef")), t)


@pytest.mark.parametrize("text,message", [
    (",school,x,y\n0,a,1,2\n1,b,2,3\n", "column 1 of the header has no name (a saved pandas index?"),
    ("school,x,y,\na,1,2,\nb,2,3,\n", "column 4 of the header has no name"),
    ("school,x,y\n", "has a header but no rows"),
    ("school,x,y\na ,1,2\na,2,3\nb,1,1\n", "labels 'a ' and 'a' differ only in spaces"),
    ("school,x,y\na\x00b,1,2\na,2,3\nb,1,1\n", "holds a control character"),
    ("school,x,y\na,1,2\nb,1e300,3\n", "column 'x' holds values as large as 1e+300"),
    ("school,x,y\na,1,1e300\nb,1,3\n", "column 'y' holds values as large as 1e+300"),
])
def test_a_bad_csv_is_one_error_naming_the_file_column_or_label(tmp_path, text, message):
    path = tmp_path / "d.csv"
    path.write_text(text)
    with pytest.raises(ValueError) as e:
        MultiTaskData.from_csv(path, task="school", target="y")
    assert message in str(e.value)


def test_a_task_named_na_stays_a_task(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("school,x,y\nNA,1,2\nNA,2,3\nnull,1,1\nnull,2,2\n")
    d = MultiTaskData.from_csv(path, task="school", target="y")
    assert d.task_names == ["NA", "null"]
    path.write_text("school,x,y\nNA,,2\nnull,2,3\n")  # a blank feature is still missing
    with pytest.raises(ValueError, match="column 'x' has 1 NaN"):
        MultiTaskData.from_csv(path, task="school", target="y")


@pytest.mark.parametrize("kwargs,error,message", [
    ({"task": "y", "target": "y"}, ValueError, "'y' cannot be both the task column and the target"),
    ({"task": "school", "target": "y", "noise": "y"}, ValueError, "both the target and the noise column"),
    ({"task": "school", "target": "y", "noise": "z", "trials": "z"}, ValueError,
     "both the noise column and the trials column"),
    ({"task": "school", "target": "y", "features": "x"}, TypeError, "features must be a list of column names"),
])
def test_one_column_in_two_roles_is_refused(kwargs, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(")):
        MultiTaskData.from_frame(frame(), **kwargs)


@pytest.mark.parametrize("kwargs,message", [
    ({"X": np.ones((0, 1)), "y": np.ones(0), "task": np.zeros(0, int)}, "X has no rows"),
    ({"task": np.array(["a", None, "b"], dtype=object)}, "task label at row 1 is missing"),
    ({"task": np.array([0.0, np.nan, 1.0])}, "task label at row 1 is missing"),
    ({"task": [0, 1, 2], "task_names": ["a", "a", "b"]}, "task_names holds 'a' twice"),
])
def test_from_arrays_refuses_what_from_frame_refuses(kwargs, message):
    args = {"X": np.ones((3, 1)), "y": np.ones(3), "task": [0, 1, 1], **kwargs}
    with pytest.raises(ValueError, match=message):
        MultiTaskData.from_arrays(args.pop("X"), args.pop("y"), args.pop("task"), **args)


def test_whole_number_float_task_indices_are_indices():
    d = MultiTaskData.from_arrays(np.ones((3, 1)), np.arange(3.0), np.array([0.0, 1.0, 1.0]), task_names=["a", "b"])
    assert d.task.tolist() == [0, 1, 1] and d.task_names == ["a", "b"]


def test_data_that_leave_the_fit_to_its_priors_are_named():
    one_row = MultiTaskData.from_frame(frame().drop_duplicates("school"), task="school", target="y")
    assert any("single row" in w and "'school'" in w for w in one_row.warnings())
    constant = MultiTaskData.from_frame(frame().assign(y=42.0), task="school", target="y")
    assert any("target 'y' is 42 in every row" in w for w in constant.warnings())
    assert MultiTaskData.from_frame(frame(), task="school", target="y").warnings() == []
