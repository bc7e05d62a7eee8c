"""KAnonymizer: hand-computed partitions, edge cases, properties and scikit-learn use."""
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from mxprivacy.errors import InvalidParameterError, UnknownValueError, UnreachableTargetError
from mxprivacy.preprocessing import (KAnonymizer, check_k_anonymity, check_l_diversity,
                                     check_t_closeness)


def test_mondrian_halves_at_the_median():
    df = pd.DataFrame({"age": [20, 21, 22, 23, 30, 31, 32, 33], "x": range(8)})
    anon = KAnonymizer(["age"], k=2)
    out = anon.fit_transform(df)
    assert out["age"].tolist() == ["[20, 21]"] * 2 + ["[22, 23]"] * 2 + ["[30, 31]"] * 2 + \
        ["[32, 33]"] * 2
    assert out["x"].tolist() == list(range(8))  # other columns untouched
    report = anon.report_
    assert report["ncp"] == pytest.approx(1 / 13)  # each class spans 1 of 13 years
    assert report["discernibility"] == 16 and report["c_avg"] == 1.0
    assert report["k_achieved"] == 2 and report["classes"] == 4


def test_ties_at_the_median_strict_and_relaxed():
    df = pd.DataFrame({"v": [1, 1, 1, 1, 2, 3]})
    strict = KAnonymizer(["v"], k=2).fit_transform(df)["v"].tolist()
    assert strict == ["1"] * 4 + ["[2, 3]"] * 2  # a one-value class keeps the plain value
    assert KAnonymizer(["v"], k=3).fit_transform(df)["v"].tolist() == ["[1, 3]"] * 6
    relaxed = KAnonymizer(["v"], k=3, mode="relaxed").fit_transform(df)["v"].tolist()
    assert relaxed == ["1"] * 3 + ["[1, 3]"] * 3  # the tie is split between classes


def test_one_value_column_missing_values_and_a_single_class():
    df = pd.DataFrame({"age": [20.0, 21.0, np.nan, np.nan], "c": ["a"] * 4})
    out = KAnonymizer(["age", "c"], k=2).fit_transform(df)
    assert out["age"].tolist() == ["[20, 21]", "[20, 21]", "missing", "missing"]
    assert out["c"].tolist() == ["a"] * 4
    single = KAnonymizer(["age", "c"], k=4).fit_transform(df)
    assert single["age"].tolist() == ["[20, 21]|missing"] * 4
    assert KAnonymizer(["age", "c"], k=4).fit(df).report_["classes"] == 1


def test_unreachable_k_and_suppression():
    df = pd.DataFrame({"v": [5, 5, 5, 5, 9]})
    with pytest.raises(UnreachableTargetError, match="k=6"):
        KAnonymizer(["v"], k=6).fit(df)
    assert KAnonymizer(["v"], k=3).fit_transform(df)["v"].tolist() == ["[5, 9]"] * 5
    anon = KAnonymizer(["v"], k=3, max_suppression=0.2)
    out = anon.anonymize(df)
    assert out["v"].tolist() == ["5"] * 4 and out.index.tolist() == [0, 1, 2, 3]
    assert anon.report_["suppressed"] == 1 and anon.report_["rows_out"] == 4
    assert anon.fit_transform(df)["v"].tolist()[-1] == "*"
    with pytest.raises(UnreachableTargetError):
        KAnonymizer(["v"], k=2, sensitive="s", l=2).fit(df.assign(s=1))


def test_hierarchy_labels_are_nodes():
    hierarchy = {"*": {"Europe": ["FR", "DE"], "Asia": ["JP", "CN"]}}
    df = pd.DataFrame({"country": ["FR", "DE", "FR", "DE", "JP", "CN", "JP", "CN"]})
    coarse = KAnonymizer(["country"], k=4, hierarchies={"country": hierarchy}).fit_transform(df)
    assert coarse["country"].tolist() == ["Europe"] * 4 + ["Asia"] * 4
    fine = KAnonymizer(["country"], k=2, hierarchies={"country": hierarchy}).fit_transform(df)
    assert fine["country"].tolist() == df["country"].tolist()
    levels = [{"FR": "Europe", "DE": "Europe", "JP": "Asia", "CN": "Asia"}]
    as_levels = KAnonymizer(["country"], k=4, hierarchies={"country": levels}).fit_transform(df)
    assert as_levels["country"].tolist() == coarse["country"].tolist()
    with pytest.raises(InvalidParameterError, match="leaves"):
        KAnonymizer(["country"], k=2, hierarchies={"country": {"*": ["FR"]}}).fit(df)


def test_ordered_categories_never_follow_row_order():
    df = pd.DataFrame({"grade": ["c", "a", "d", "b"]})
    out = KAnonymizer(["grade"], k=2).fit_transform(df)["grade"].tolist()
    assert out == ["{c|d}", "{a|b}", "{c|d}", "{a|b}"]  # sorted order a < b < c < d
    custom = KAnonymizer(["grade"], k=2, orders={"grade": ["a", "c", "b", "d"]})
    assert custom.fit_transform(df)["grade"].tolist() == ["{a|c}", "{a|c}", "{b|d}", "{b|d}"]


def test_representative_output_and_transform_of_new_rows():
    df = pd.DataFrame({"age": [20, 21, 22, 23, 30, 31, 32, 35], "job": list("aabbccdd")})
    anon = KAnonymizer(["age", "job"], k=4, output="representative").fit(df)
    out = anon.transform(df)
    assert out["age"].tolist() == [21.5] * 4 + [31.5] * 4
    assert out["age"].dtype == np.float64
    new_rows = pd.DataFrame({"age": [19, 33], "job": ["b", "zzz"]})
    with pytest.raises(UnknownValueError, match="'age' has value 19"):
        KAnonymizer(["age", "job"], k=4).fit(df).transform(new_rows)
    generalized = KAnonymizer(["age", "job"], k=4, handle_unknown="generalize").fit(df)
    new = generalized.transform(new_rows)
    assert new["age"].tolist() == ["[19, 35]", "[30, 35]"]  # 19 widens the full range
    assert new["job"].tolist() == ["{a|b}", "{a|b|c|d|missing|zzz}"]
    assert list(generalized.get_feature_names_out()) == ["age", "job"]


def test_parameters_are_validated_at_fit():
    df = pd.DataFrame({"a": [1, 2], "s": [0, 1]})
    for bad in (dict(k=0), dict(mode="fast"), dict(output="json"), dict(max_suppression=1.5),
                dict(l=2), dict(quasi_identifiers=["zz"]), dict(sensitive="s", l=2,
                                                                l_kind="recursive")):
        with pytest.raises(InvalidParameterError):
            KAnonymizer(**bad).fit(df)
    from sklearn.exceptions import NotFittedError
    with pytest.raises(NotFittedError):
        KAnonymizer().transform(df)


frames = st.integers(10, 60).flatmap(lambda n: st.tuples(
    st.lists(st.one_of(st.integers(18, 90), st.none()), min_size=n, max_size=n),
    st.lists(st.sampled_from(["a", "b", "c", "d", None]), min_size=n, max_size=n),
    st.lists(st.sampled_from(["x", "y", "z"]), min_size=n, max_size=n)))


@settings(max_examples=40, deadline=None)
@given(data=frames, k=st.integers(1, 6), l=st.sampled_from([None, 2]),
       mode=st.sampled_from(["strict", "relaxed"]), suppression=st.sampled_from([0.0, 0.2]))
def test_properties_on_random_frames(data, k, l, mode, suppression):
    ages, jobs, disease = data
    df = pd.DataFrame({"age": pd.array(ages, dtype="float64"), "job": jobs, "disease": disease})
    anon = KAnonymizer(["age", "job"], k=k, sensitive="disease", l=l, mode=mode,
                       max_suppression=suppression)
    try:
        out = anon.anonymize(df)
    except UnreachableTargetError:
        assert len(df) < k or (l and df["disease"].nunique() < l)
        return
    report = anon.report_
    assert report["rows_out"] + report["suppressed"] == report["rows_in"] == len(df)
    assert len(out) == report["rows_out"]
    assert check_k_anonymity(out, ["age", "job"]) >= k
    if l:
        assert check_l_diversity(out, ["age", "job"], "disease") >= l
    for column in anon.columns_:
        for label, original in zip(out[column.name], df.loc[out.index, column.name]):
            assert column.covers(label, original), (column.name, label, original)


def test_t_closeness_is_enforced_on_adult_like_data():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"age": rng.integers(18, 80, 400), "hours": rng.integers(10, 60, 400),
                       "income": rng.choice([">50K", "<=50K"], 400, p=[0.25, 0.75])})
    anon = KAnonymizer(["age", "hours"], k=5, sensitive="income", t=0.1)
    out = anon.anonymize(df)
    assert check_t_closeness(out, ["age", "hours"], "income") <= 0.1 + 1e-12
    assert check_k_anonymity(out, ["age", "hours"]) >= 5


def test_pipeline_and_column_transformer():
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"age": rng.integers(18, 80, 200).astype(float),
                       "hours": rng.integers(10, 60, 200).astype(float),
                       "x": rng.normal(size=200)})
    y = (df["age"] + rng.normal(scale=5, size=200) > 48).astype(int)
    columns = ColumnTransformer([("anon", KAnonymizer(k=10, output="representative"),
                                  ["age", "hours"]), ("rest", "passthrough", ["x"])])
    model = Pipeline([("prep", columns), ("clf", LogisticRegression())]).fit(df, y)
    assert model.score(df, y) > 0.7
    numpy_out = KAnonymizer(k=10).fit_transform(df[["age", "hours"]].to_numpy())
    assert numpy_out.shape == (200, 2)


def test_sklearn_estimator_conventions():
    from sklearn.utils.estimator_checks import (check_get_params_invariance,
                                                check_no_attributes_set_in_init,
                                                check_parameters_default_constructible,
                                                check_set_params)
    estimator = KAnonymizer()
    check_no_attributes_set_in_init("KAnonymizer", estimator)
    check_get_params_invariance("KAnonymizer", estimator)
    check_set_params("KAnonymizer", estimator)
    check_parameters_default_constructible("KAnonymizer", estimator)


def test_hierarchical_t_closeness_is_enforced():
    tree = {"*": {"digestive": ["gastric", "colitis"], "respiratory": ["flu", "bronchitis"]}}
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"age": rng.integers(20, 80, 300),
                       "d": rng.choice(["gastric", "colitis", "flu", "bronchitis"], 300,
                                       p=[0.4, 0.1, 0.4, 0.1])})
    anon = KAnonymizer(["age"], k=4, sensitive="d", t=0.15, hierarchies={"d": tree})
    out = anon.anonymize(df)
    assert check_t_closeness(out, ["age"], "d", hierarchy=tree) <= 0.15 + 1e-12
    strict = KAnonymizer(["age"], k=4, sensitive="d", t=0.15).anonymize(df)
    assert anon.report_["classes"] >= KAnonymizer(["age"], k=4, sensitive="d", t=0.15) \
        .fit(df).report_["classes"]  # the hierarchical distance is never larger
    assert len(strict) == len(df)
