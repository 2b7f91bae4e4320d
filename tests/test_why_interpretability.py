"""Stage 00: the stand-in corpus, the forest and its accuracy, LIME on text and on an image, and the check."""

from __future__ import annotations

import codecs
import pickle

import numpy as np
import pytest
import torch

from labkit import checks
from labkit import why_interpretability as wi

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def news():
    return wi.make_stand_in(seed=0)


@pytest.fixture(scope="module")
def forest(news):
    return wi.train_forest(news.train_data, news.train_target, seed=0)


# ----------------------------------------------------------------------------------------------------
# The data


def test_stand_in_is_deterministic_and_says_so(news):
    again = wi.make_stand_in(seed=0)
    assert again.train_data == news.train_data and again.test_data == news.test_data
    assert np.array_equal(again.train_target, news.train_target) and np.array_equal(again.test_target, news.test_target)
    other = wi.make_stand_in(seed=1)
    assert other.train_data != news.train_data
    # post i depends only on (seed, subset, i): a smaller corpus is a prefix of the larger one
    small = wi.make_stand_in(n_train=10, n_test=5, seed=0)
    assert small.train_data == news.train_data[:10] and small.test_data == news.test_data[:5]
    assert news.is_stand_in and news.source == "stand-in" and "STAND-IN" in news.note
    assert news.target_names == ("alt.atheism", "soc.religion.christian")
    assert len(news.train_data) == 480 and len(news.test_data) == 320
    counts = np.bincount(news.train_target)
    assert counts.min() > 150  # both groups well represented
    for post in news.train_data[:50]:
        header, body = wi.split_header(post)
        assert header.startswith("From: ") and "\nSubject: " in header and body.strip()


def test_the_confound_is_in_the_headers(news):
    """NNTP-Posting-Host is far more common in alt.atheism: the spurious cue the course is about."""
    has_host = np.array(["NNTP-Posting-Host" in p for p in news.train_data])
    rate = [has_host[news.train_target == c].mean() for c in (0, 1)]
    assert rate[0] > 0.7 and rate[1] < 0.2
    bare = wi.without_headers(news)
    assert not any("NNTP" in p or "From:" in p for p in bare.train_data + bare.test_data)
    assert bare.train_data[0] == wi.split_header(news.train_data[0])[1]


def test_load_falls_back_to_the_stand_in_and_flags_it(tmp_path, monkeypatch):
    monkeypatch.delenv("LABKIT_NEWSGROUPS", raising=False)
    news = wi.load_newsgroups(data_home=tmp_path)  # an empty cache: nothing is downloaded
    assert news.source == "stand-in" and news.describe().startswith("Data: a STAND-IN corpus")
    with pytest.raises(FileNotFoundError, match="labkit fetch newsgroups") as err:
        wi.load_newsgroups("20newsgroups", data_home=tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="choose one of auto, 20newsgroups, stand-in"):
        wi.load_newsgroups("reddit")
    monkeypatch.setenv("LABKIT_NEWSGROUPS", "20newsgroups")
    with pytest.raises(FileNotFoundError):
        wi.load_newsgroups(data_home=tmp_path)


def test_load_uses_the_real_posts_when_cached(tmp_path, monkeypatch):
    """A tiny cache in scikit-learn's own format stands for the real download."""
    from sklearn.datasets import load_files
    from sklearn.datasets._base import _pkl_filepath
    from sklearn.datasets._twenty_newsgroups import CACHE_NAME

    monkeypatch.delenv("LABKIT_NEWSGROUPS", raising=False)
    cache = {}
    for subset in ("train", "test"):
        root = tmp_path / "raw" / subset
        for group in ("alt.atheism", "comp.graphics", "soc.religion.christian"):
            (root / group).mkdir(parents=True)
            for i in range(3):
                (root / group / str(i)).write_text(f"From: x@{group}\n\n{subset} post {i} of {group}\n")
        cache[subset] = load_files(str(root), encoding="latin1")
    home = tmp_path / "home"
    home.mkdir()
    with open(_pkl_filepath(str(home), CACHE_NAME), "wb") as f:
        f.write(codecs.encode(pickle.dumps(cache), "zlib_codec"))
    news = wi.load_newsgroups(data_home=home)
    assert news.source == "20newsgroups" and not news.is_stand_in and "real 20 newsgroups" in news.note
    assert news.target_names == ("alt.atheism", "soc.religion.christian")
    assert len(news.train_data) == 6 and len(news.test_data) == 6  # comp.graphics left out
    assert all("comp.graphics" not in p for p in news.train_data)
    for post, target in zip(news.train_data, news.train_target):
        assert news.target_names[target] in post


def test_fetch_offline_is_a_one_line_error(monkeypatch):
    import urllib.error

    import sklearn.datasets

    def offline(**kwargs):
        assert kwargs["download_if_missing"] is True
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(sklearn.datasets, "fetch_20newsgroups", offline)
    with pytest.raises(RuntimeError, match="could not download 20 newsgroups .no route to host.") as err:
        wi.fetch_newsgroups()
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------------------------------
# The forest


def test_forest_accuracy_is_high_but_rests_on_headers(news, forest):
    acc = wi.accuracy(forest, news.test_data, news.test_target)
    assert 0.85 <= acc <= 0.97  # measured: 0.900
    assert forest[-1].n_estimators == 500
    bare = wi.without_headers(news)
    bare_forest = wi.train_forest(bare.train_data, bare.train_target, seed=0)
    bare_acc = wi.accuracy(bare_forest, bare.test_data, bare.test_target)
    assert acc - bare_acc > 0.12  # measured: 0.678, 0.22 lower
    assert wi.accuracy(forest, news.train_data, news.train_target) == 1.0  # a forest memorises its training set


def test_accuracy_is_the_fraction_correct():
    class Constant:
        def predict(self, docs):
            return np.zeros(len(docs), dtype=int)

    assert wi.accuracy(Constant(), ["a", "b", "c", "d"], [0, 1, 0, 0]) == 0.75


# ----------------------------------------------------------------------------------------------------
# LIME on text


def test_text_lime_is_reproducible_and_explains_words_of_the_post(news, forest):
    doc = news.test_data[83]
    first = wi.explain_text(forest, doc, news.target_names, num_samples=500, seed=0)
    second = wi.explain_text(forest, doc, news.target_names, num_samples=500, seed=0)
    label = wi.explained_label(first)
    assert label == int(forest.predict([doc])[0])  # the predicted class by default
    assert first.as_list(label=label) == second.as_list(label=label)
    other = wi.explain_text(forest, doc, news.target_names, num_samples=500, seed=1)
    assert other.as_list(label=label) != first.as_list(label=label)  # the seed really drives the sampling
    table = wi.word_table(first, doc)
    assert len(table) == 6 and all(isinstance(w, str) for w, _, _ in table)
    assert {w for w, _, _ in table} <= wi.document_words(doc)
    weights = [abs(v) for _, v, _ in table]
    assert weights == sorted(weights, reverse=True)


def test_text_lime_points_at_the_header(news, forest):
    """The point of the stage: on the tutorial's post, the strongest words come from the header."""
    doc = news.test_data[83]
    table = wi.word_table(wi.explain_text(forest, doc, news.target_names, seed=0), doc)
    assert sum(where == "header" for _, _, where in table) >= 5
    assert {"NNTP", "Posting", "Host"} <= {w for w, _, _ in table[:4]}


def test_text_lime_label_can_be_chosen_and_is_checked(news, forest):
    doc = news.test_data[0]
    exp = wi.explain_text(forest, doc, news.target_names, label=0, num_samples=200, seed=0)
    assert wi.explained_label(exp) == 0
    with pytest.raises(ValueError, match="label 2 is out of range: the classifier has 2 classes"):
        wi.explain_text(forest, doc, news.target_names, label=2)


def test_show_word_table_prints_every_word(news, forest, capsys):
    doc = news.test_data[83]
    exp = wi.explain_text(forest, doc, news.target_names, num_features=4, num_samples=300, seed=0)
    wi.show_word_table(exp, doc)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("words behind P(alt.atheism)") and len(out) == 5


# ----------------------------------------------------------------------------------------------------
# LIME on an image


@pytest.fixture(scope="module")
def backbone():
    return wi.demo_backbone("minivgg")[0]


def test_image_lime_mask_shape_and_reproducibility(backbone):
    image = wi.demo_image(backbone)
    first = wi.lime_image_explanation(backbone, image, num_samples=60, seed=0)
    assert first.mask.shape == backbone.input_size and first.mask.dtype == bool
    assert first.segments.shape == backbone.input_size
    k = first.segments.max() + 1
    assert set(np.unique(first.segments)) == set(range(k)) and 10 <= k <= 60
    # the mask is a union of whole superpixels, at most num_features of them
    chosen = np.unique(first.segments[first.mask])
    assert 1 <= len(chosen) <= 5 and np.array_equal(np.isin(first.segments, chosen), first.mask)
    probs = backbone.predict(image)[0]
    assert first.label == int(np.argmax(probs)) and first.probability == pytest.approx(float(probs.max()), abs=1e-6)
    assert first.class_name == backbone.class_names[first.label]
    assert first.overlay.shape == (*backbone.input_size, 3) and 0 <= first.overlay.min() <= first.overlay.max() <= 1
    again = wi.lime_image_explanation(backbone, image, num_samples=60, seed=0)
    assert again.weights == first.weights and np.array_equal(again.mask, first.mask)
    other = wi.lime_image_explanation(backbone, image, num_samples=60, seed=1)
    assert other.weights != first.weights


def test_image_lime_explicit_target_and_bad_input(backbone):
    image = wi.demo_image(backbone)
    res = wi.lime_image_explanation(backbone, image, target=2, num_samples=30, seed=0)
    assert res.label == 2 and res.class_name == backbone.class_names[2]
    with pytest.raises(ValueError, match="target 6 is out of range: minivgg has 6 classes"):
        wi.lime_image_explanation(backbone, image, target=6)
    with pytest.raises(ValueError, match=r"shape \(N, 96, 96, 3\)"):
        wi.lime_image_explanation(backbone, np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="explains one image"):
        wi.lime_image_explanation(backbone, np.stack([image, image]))


def test_vectorised_sampling_matches_lime(backbone):
    """labkit's sampling loop gives lime's own perturbed images and draws, for the same seed."""
    from lime.lime_image import LimeImageExplainer

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (12, 10, 3)).astype(np.uint8)
    segments = np.repeat(np.arange(6), 20).reshape(12, 10)
    fudged = np.full_like(image, 127)
    seen = {"ours": [], "lime": []}

    def record(key):
        def fn(batch):
            seen[key].append(np.array(batch))
            return batch.reshape(len(batch), -1)[:, :4].astype(float)

        return fn

    ours = wi._lime_image_explainer(7, progress=False).data_labels(image, fudged, segments, record("ours"), 23, batch_size=5)
    theirs = LimeImageExplainer(random_state=7).data_labels(image, fudged, segments, record("lime"), 23, batch_size=5)
    assert np.array_equal(ours[0], theirs[0]) and np.array_equal(ours[1], theirs[1])
    assert np.array_equal(np.concatenate(seen["ours"]), np.concatenate(seen["lime"]))


# ----------------------------------------------------------------------------------------------------
# The check


@pytest.fixture(scope="module")
def small():
    return wi.make_stand_in(n_train=120, n_test=80, seed=0)


@pytest.fixture(scope="module")
def small_forest(small):
    return wi.train_forest(small.train_data, small.train_target, seed=0)


def run_check(capsys, *args, **kwargs):
    ok = checks.why_interpretability(*args, **kwargs)
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # one line, pass or hint
    return ok, out


def test_check_passes_the_reference(small, small_forest, capsys):
    acc = wi.accuracy(small_forest, small.test_data, small.test_target)
    ok, out = run_check(capsys, small_forest, acc, small, seed=0)
    assert ok and out.startswith("PASS [00 why interpretability]")
    ok, _ = run_check(capsys, small_forest, np.float64(acc), small, seed=0)  # np.mean gives numpy floats
    assert ok


def test_check_accepts_another_seed_within_tolerance(small, capsys):
    other = wi.train_forest(small.train_data, small.train_target, seed=5)
    ok, out = run_check(capsys, other, wi.accuracy(other, small.test_data, small.test_target), small, seed=0)
    assert ok, out


def hint(capsys, *args, **kwargs):
    ok, out = run_check(capsys, *args, **kwargs)
    assert not ok and out.startswith("HINT [00 why interpretability]")
    assert "make_pipeline(" not in out and "fit(news" not in out  # hints point, they never hand out code
    return out


def test_check_hints_for_recognised_mistakes(small, small_forest, capsys):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline

    acc = wi.accuracy(small_forest, small.test_data, small.test_target)
    train_acc = wi.accuracy(small_forest, small.train_data, small.train_target)
    assert train_acc != acc
    assert "training posts" in hint(capsys, small_forest, train_acc, small)
    assert "percentage" in hint(capsys, small_forest, 100 * acc, small)
    assert "error rate" in hint(capsys, small_forest, 1 - acc, small)
    assert "not 0.1234" in hint(capsys, small_forest, 0.1234, small)
    assert "one number" in hint(capsys, small_forest, [acc], small)
    assert "not a scikit-learn Pipeline" in hint(capsys, small_forest[-1], acc, small)
    assert "has 10 trees" in hint(capsys, make_pipeline(TfidfVectorizer(), RandomForestClassifier(10, random_state=0)), acc, small)
    unseeded = make_pipeline(TfidfVectorizer(lowercase=False), RandomForestClassifier(500))
    assert "random_state" in hint(capsys, unseeded, acc, small)
    unfitted = make_pipeline(TfidfVectorizer(lowercase=False), RandomForestClassifier(500, random_state=0))
    assert "not fitted" in hint(capsys, unfitted, acc, small)
    on_test = wi.train_forest(small.test_data, small.test_target, seed=0)
    assert "fitted on the test posts" in hint(capsys, on_test, wi.accuracy(on_test, small.test_data, small.test_target), small)
    lower = make_pipeline(TfidfVectorizer(), RandomForestClassifier(500, random_state=0)).fit(small.train_data, small.train_target)
    assert "lower-cases" in hint(capsys, lower, wi.accuracy(lower, small.test_data, small.test_target), small)


def test_check_flags_a_forest_far_from_the_reference(small, capsys):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline

    # One-word vocabulary: a forest that cannot be as good as the reference.
    weak = make_pipeline(TfidfVectorizer(lowercase=False, vocabulary=["the"]), RandomForestClassifier(500, random_state=0))
    weak.fit(small.train_data, small.train_target)
    out = hint(capsys, weak, wi.accuracy(weak, small.test_data, small.test_target), small)
    assert "the reference" in out


def test_check_needs_the_newsgroups(small_forest):
    with pytest.raises(TypeError, match="Newsgroups"):
        checks.why_interpretability(small_forest, 0.9, ["a post"])


def test_check_before_the_exercise_is_a_hint(small, capsys):
    """The notebook sets pipeline = test_accuracy = None before the exercise: an unfilled one gets a hint."""
    assert "`pipeline` is None: build it and fit it" in hint(capsys, None, None, small)


def test_outlined_superpixels_are_the_mask_with_their_weights(backbone):
    image = wi.demo_image(backbone)
    res = wi.lime_image_explanation(backbone, image, num_samples=60, seed=0)
    mask = wi.demo_mask(backbone)
    assert mask.shape == backbone.input_size and mask.any() and not mask.all()
    rows = wi.outlined_superpixels(res, mask)
    assert {s for s, _, _ in rows} == set(np.unique(res.segments[res.mask]).tolist())
    assert [w for _, w, _ in rows] == sorted((w for _, w, _ in rows), key=abs, reverse=True)
    for segment, weight, on in rows:
        assert dict(res.weights)[segment] == weight and on == pytest.approx(mask[res.segments == segment].mean())
    assert all(on is None for _, _, on in wi.outlined_superpixels(res))
