"""Check for stage 00: the text classifier the student builds and its test accuracy."""

from __future__ import annotations

import numbers

import numpy as np


from .base import Hint as _Hint, report as _report


# ----------------------------------------------------------------------------------------------------
# 00 why interpretability


def _steps(pipeline):
    if pipeline is None:
        raise _Hint("`pipeline` is None: build it and fit it in the exercise cell above, then run this cell again")
    steps = getattr(pipeline, "steps", None)
    if steps is None:
        raise _Hint(
            f"`pipeline` is a {type(pipeline).__name__}, not a scikit-learn Pipeline: chain the vectoriser and the "
            "forest with make_pipeline so that LIME can feed it raw text"
        )
    return [step for _, step in steps]


def _forest_and_vectorizer(pipeline):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.feature_extraction.text import TfidfVectorizer

    steps = _steps(pipeline)
    vectorizers = [s for s in steps if isinstance(s, TfidfVectorizer)]
    forests = [s for s in steps if isinstance(s, RandomForestClassifier)]
    if not vectorizers:
        raise _Hint("the pipeline has no TfidfVectorizer: the forest needs TF-IDF features of the raw posts")
    if not forests:
        raise _Hint("the pipeline has no RandomForestClassifier: the course's model is a random forest")
    if steps[-1] is not forests[0] or steps.index(vectorizers[0]) > steps.index(forests[0]):
        raise _Hint("the pipeline's steps are out of order: text goes into the vectoriser, its features into the forest")
    return vectorizers[0], forests[0]


def _fitted(forest) -> bool:
    return hasattr(forest, "estimators_")


def why_interpretability(pipeline, accuracy, news, seed: int = 0) -> bool:
    """Stage 00: a fitted TF-IDF + 500-tree random forest and its accuracy on the TEST posts.

    ``pipeline`` is the student's fitted pipeline, ``accuracy`` their test accuracy (a fraction),
    ``news`` the :class:`labkit.why_interpretability.Newsgroups` they trained on, ``seed`` the notebook's
    SEED. The reference is the same pipeline fitted with ``seed``; a forest grown from another seed
    passes if it scores within 0.05 of it.
    """
    from .. import why_interpretability as wi

    if not isinstance(news, wi.Newsgroups):
        raise TypeError(f"why_interpretability checks against a Newsgroups (from load_newsgroups), got {type(news).__name__}")

    def run() -> str:
        vectorizer, forest = _forest_and_vectorizer(pipeline)
        if forest.n_estimators != 500:
            raise _Hint(f"your forest has {forest.n_estimators} trees; the course's example uses 500 (n_estimators)")
        if forest.random_state is None:
            raise _Hint("the forest has no random_state: give it the notebook's SEED so that your run (and LIME's) is reproducible")
        if not _fitted(forest) or not hasattr(vectorizer, "vocabulary_"):
            raise _Hint("the pipeline is not fitted yet: call its fit method on the training posts and their labels")
        # With bootstrap, a tree's root carries a total sample weight equal to the number of posts it was grown on.
        n_fit = int(round(forest.estimators_[0].tree_.weighted_n_node_samples[0]))
        n_train, n_test = len(news.train_data), len(news.test_data)
        if n_fit == n_test and n_test != n_train:
            raise _Hint("the forest was fitted on the test posts: fit on news.train_data, keep the test posts for measuring")
        if n_fit != n_train:
            raise _Hint(f"the forest was fitted on {n_fit} posts, but there are {n_train} training posts: fit on all of news.train_data")
        if "NNTP" not in vectorizer.vocabulary_ and "nntp" in vectorizer.vocabulary_:
            raise _Hint("the vectoriser lower-cases the text: the course's example keeps case (look at TfidfVectorizer's options)")

        if isinstance(accuracy, (bool, np.bool_)) or not isinstance(accuracy, (numbers.Real, np.floating, np.integer)):
            raise _Hint(f"`accuracy` should be one number (a fraction of posts), got a {type(accuracy).__name__}")
        acc = float(accuracy)
        if 1.0 < acc <= 100.0:
            raise _Hint(f"accuracy {acc:g} looks like a percentage: give the fraction, between 0 and 1")
        if not 0.0 <= acc <= 1.0:
            raise _Hint(f"accuracy {acc:g} is not a fraction between 0 and 1")
        test_acc = wi.accuracy(pipeline, news.test_data, news.test_target)
        if abs(acc - test_acc) > 1e-9:
            train_acc = wi.accuracy(pipeline, news.train_data, news.train_target)
            if abs(acc - train_acc) < 1e-9:
                raise _Hint(
                    "that is the accuracy on the training posts, which a forest nearly memorises: measure it on news.test_data"
                )
            if abs(acc - (1.0 - test_acc)) < 1e-9:
                raise _Hint("that is the error rate: accuracy is the fraction of posts predicted correctly")
            raise _Hint(f"your pipeline's accuracy on the test posts is not {acc:.4f}: compare its predictions on news.test_data with news.test_target")

        reference = wi.train_forest(news.train_data, news.train_target, n_estimators=500, seed=seed)
        ref_acc = wi.accuracy(reference, news.test_data, news.test_target)
        if abs(test_acc - ref_acc) > 0.05:
            raise _Hint(
                f"your forest scores {test_acc:.3f} on the test posts, the reference {ref_acc:.3f}: check the vectoriser's "
                "and the forest's options against the instructions"
            )
        return "a fitted TF-IDF + 500-tree forest, its accuracy measured on the test posts and in line with the reference"

    return _report("00 why interpretability", run)
