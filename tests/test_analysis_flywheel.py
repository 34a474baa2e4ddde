"""The flywheel's gates: a bundle trained from signed-out cases is compared with the active bundle on the
same held-out signed-out cases; "Make active" refuses a bundle worse than the active one by more than
PATHALIGN_BUNDLE_MAX_REGRESSION (R@1) unless a lab admin overrides it with a written reason (audited); a
bundle without a comparison needs the override too; training is not offered below
PATHALIGN_TRAIN_MIN_CASES_PER_CLASS signed-out cases per class."""
from __future__ import annotations

import shutil
import uuid

import pytest

from tests import test_analysis_support as support
from tests.conftest import start_worker, stop_worker, wait_for
from tests.model_fixtures import prime_features
from tests.test_reports_support import fake_slide, signed_report
from webapp.analysis import pipeline, runtime, training
from webapp.analysis.models import ModelBundle
from webapp.audit.models import AuditEvent
from webapp.jobs import runner as jobs
from webapp.jobs.models import Job, JobState
from webapp.slides.models import Slide

tiny_bundle_dir, second_bundle_dir = support.tiny_bundle_dir, support.second_bundle_dir
active_bundle = support.active_bundle

TINY_TRAINING = {"epochs": 1, "num_hidden_layers": 1, "batch_size": 4, "max_text_len": 32, "max_patches": 16,
                 "warmup_steps": 1, "threads": 1}
TEXTS = {"Colon, sigmoid": ["Tubular adenoma with low-grade dysplasia.", "Hyperplastic polyp.",
                            "Adenocarcinoma, moderately differentiated.", "Sessile serrated lesion.",
                            "Colonic mucosa without abnormality.", "Tubulovillous adenoma."],
         "Stomach, antrum": ["Chronic gastritis with Helicobacter.", "Intestinal metaplasia.",
                             "Gastric adenocarcinoma, diffuse type.", "Fundic gland polyp.",
                             "Gastric mucosa without abnormality.", "Reactive gastropathy."]}


@pytest.fixture
def no_broker(monkeypatch):
    monkeypatch.setattr(jobs, "dispatch", lambda job_id: True)


def _signed_out(case_factory, user, bundle, per_site: dict[str, int]) -> list:
    """Signed-out cases (one part, one slide with primed patch features) through the real sign-out."""
    from webapp.cases.specimens import ensure_default_rules

    ensure_default_rules()  # organ from site ("Colon, sigmoid" -> colon)
    cases = []
    for site, count in per_site.items():
        for i in range(count):
            case = case_factory(assigned_to=user, sites={"A": site})
            slide = fake_slide(case.parts.get(), f"s{i}")
            prime_features(slide, bundle, n=24, seed=len(cases))
            signed_report(case, user, TEXTS[site][i % len(TEXTS[site])] + f" Case {len(cases)}.")
            cases.append(case)
    return cases


def _bundle_with_comparison(tmp_path, source, active, new_r1, active_r1, name="tiny-c") -> ModelBundle:
    """A copy of a tiny bundle on disk whose eval.json holds a held-out comparison with `active`, as the
    training job writes it, registered the way every bundle is (from its directory)."""
    from inference.bundle import write_eval

    out = tmp_path / f"{name}-{uuid.uuid4().hex[:6]}"
    shutil.copytree(source, out)
    config = (out / "bundle.json").read_text().replace('"name": "tiny-b"', f'"name": "{name}"')
    (out / "bundle.json").write_text(config)
    n = 10
    write_eval(out, {"heldout_comparison": {
        "heldout_cases": n, "heldout_case_ids": list(range(1, n + 1)), "class_basis": "organ",
        "active_bundle": str(active), "active_bundle_key": active.key, "active_bundle_id": active.pk,
        "new": {"n": n, "i2t_r1": new_r1, "i2t_r1_hits": round(new_r1 * n), "i2t_r5": 1.0,
                "i2t_r5_hits": n},
        "active": {"n": n, "i2t_r1": active_r1, "i2t_r1_hits": round(active_r1 * n), "i2t_r5": 1.0,
                   "i2t_r5_hits": n},
    }})
    return pipeline.register_bundle(out)


# --- the gate --------------------------------------------------------------------------------------------
def test_gate_refuses_a_worse_bundle_and_an_override_with_a_reason_activates_it_audited(
    active_bundle, second_bundle_dir, tmp_path, cast, client_for, settings
):
    assert settings.BUNDLE_MAX_REGRESSION == 0.02  # the documented default
    worse = _bundle_with_comparison(tmp_path, second_bundle_dir, active_bundle, new_r1=0.6, active_r1=0.9)
    client = client_for(cast.admin)
    page = client.get(f"/models/{worse.pk}/").content.decode()
    assert "The new bundle finds the right report first for 6 of 10 held-out slides" in page
    assert f"the active one ({active_bundle.key}) for 9 of 10: worse by 30 points" in page
    assert "needs an override" in page and "2 points" in page  # the stated margin
    gate = pipeline.activation_gate(worse)
    assert not gate.allowed and "worse by 30 points" in gate.reason
    with pytest.raises(pipeline.ActivationRefused):
        pipeline.make_active(worse)

    refused = client.post(f"/models/{worse.pk}/activate/")
    assert refused.status_code == 409 and "worse by 30 points" in refused.content.decode()
    assert client.post(f"/models/{worse.pk}/activate/", {"override_reason": "  "}).status_code == 409
    worse.refresh_from_db()
    active_bundle.refresh_from_db()
    assert not worse.is_active and active_bundle.is_active
    assert not AuditEvent.objects.filter(action__startswith="model_activate").exclude(
        action="model_activate_refused").exists()
    assert AuditEvent.objects.filter(action="model_activate_refused", object_id=str(worse.pk)).exists()

    reason = "The held-out set is two colon cases; the new bundle reads our stomach cases better."
    done = client.post(f"/models/{worse.pk}/activate/", {"override_reason": reason})
    assert done.status_code == 302
    worse.refresh_from_db()
    assert worse.is_active and runtime.active_bundle() == worse
    event = AuditEvent.objects.get(action="model_activate_override", object_id=str(worse.pk))
    assert event.details["reason"] == reason and event.user == cast.admin
    assert event.details["new_r1"] == 0.6 and event.details["active_r1"] == 0.9
    assert event.details["margin"] == 0.02 and event.details["previous"] == str(active_bundle)


def test_gate_allows_a_bundle_within_the_margin_and_states_it(active_bundle, second_bundle_dir, tmp_path, cast,
                                                              client_for, settings):
    settings.BUNDLE_MAX_REGRESSION = 0.1
    close = _bundle_with_comparison(tmp_path, second_bundle_dir, active_bundle, new_r1=0.8, active_r1=0.9)
    client = client_for(cast.admin)
    page = client.get(f"/models/{close.pk}/").content.decode()
    assert "for 8 of 10 held-out slides" in page and "worse by 10 points" in page
    assert pipeline.activation_gate(close).allowed
    assert client.post(f"/models/{close.pk}/activate/").status_code == 302
    close.refresh_from_db()
    assert close.is_active
    event = AuditEvent.objects.get(action="model_activate", object_id=str(close.pk))
    assert event.details["new_r1"] == 0.8 and event.details["active_r1"] == 0.9 and not event.details["override"]


def test_a_bundle_without_comparison_needs_the_override_unless_none_is_active(
    db, tiny_bundle_dir, second_bundle_dir, cast, client_for, settings, tmp_path
):
    settings.VAR_DIR = tmp_path / "var"
    first = pipeline.register_bundle(tiny_bundle_dir)
    assert pipeline.activation_gate(first).allowed  # nothing is active yet: nothing to compare with
    client = client_for(cast.admin)
    assert client.post(f"/models/{first.pk}/activate/").status_code == 302
    # Registered from disk with the activate box ticked: registered, but the gate keeps it inactive.
    response = client.post("/models/", {"path": str(second_bundle_dir), "activate": "on"}, follow=True)
    second = ModelBundle.objects.get(name="tiny-b")
    page = response.content.decode()
    assert not second.is_active and "no held-out comparison" in page
    assert "no held-out comparison" in client.get(f"/models/{second.pk}/").content.decode()
    assert client.post(f"/models/{second.pk}/activate/").status_code == 409
    assert client.post(f"/models/{second.pk}/activate/",
                       {"override_reason": "Vendor bundle validated on our QA set."}).status_code == 302
    second.refresh_from_db()
    assert second.is_active
    event = AuditEvent.objects.get(action="model_activate_override", object_id=str(second.pk))
    assert event.details["new_r1"] is None and "no held-out comparison" in event.details["gate"]


def test_a_comparison_with_another_bundle_than_the_active_one_needs_the_override(
    active_bundle, second_bundle_dir, tmp_path
):
    better = _bundle_with_comparison(tmp_path, second_bundle_dir, active_bundle, new_r1=1.0, active_r1=0.5)
    assert pipeline.activation_gate(better).allowed
    other = _bundle_with_comparison(tmp_path, second_bundle_dir, active_bundle, 0.5, 0.5, name="tiny-d")
    pipeline.activate_bundle(other)
    gate = pipeline.activation_gate(better)
    assert not gate.allowed and active_bundle.key in gate.reason and other.key in gate.reason


# --- the minimum ---------------------------------------------------------------------------------------
def test_training_is_not_offered_below_the_minimum_per_class(active_bundle, case_factory, cast, client_for,
                                                             settings, no_broker):
    assert settings.TRAIN_MIN_CASES_PER_CLASS == 5
    _signed_out(case_factory, cast.path1, active_bundle, {"Colon, sigmoid": 5, "Stomach, antrum": 3})
    readiness = training.training_readiness()
    assert readiness.basis == "organ" and readiness.counts == {"colon": 5, "stomach": 3}
    assert not readiness.ok and readiness.missing == {"stomach": 2}
    client = client_for(cast.admin)
    page = client.get("/models/").content.decode()
    assert "colon: 5 cases" in page and "stomach: 3 cases (2 more needed)" in page
    assert "at least 5 signed-out cases per class" in page and "Start training" not in page
    response = client.post("/models/train/", {"name": "local", "version": "1", "epochs": 1}, follow=True)
    assert "stomach: 3 cases (2 more needed)" in response.content.decode()
    assert not Job.objects.filter(kind=training.TRAIN).exists()
    # The job checks again (it may have been queued before cases were amended away).
    job = training.queue_training(cast.admin, "local", "1", TINY_TRAINING)
    with pytest.raises(jobs.JobFailed, match=r"stomach: 3 cases \(2 more needed\)"):
        jobs.execute(job.pk)
    assert Job.objects.get(pk=job.pk).state == JobState.FAILED
    settings.TRAIN_MIN_CASES_PER_CLASS = 3
    assert training.training_readiness().ok
    assert "Start training" in client.get("/models/").content.decode()


def test_classes_are_the_reported_diagnosis_category_when_every_case_states_one(active_bundle, case_factory,
                                                                                cast):
    from tests.model_fixtures import bundle_row
    from tests.test_reports_support import drafted_report
    from webapp.reports import services
    from webapp.reports.labelsets import ensure_default_label_sets
    from webapp.reports.models import Classification, LabelSet

    ensure_default_label_sets()
    category = LabelSet.objects.get(name="Diagnosis category")
    labels = list(category.labels.values_list("name", flat=True))[:2]
    for i, label in enumerate([labels[0], labels[0], labels[1]]):
        case = case_factory(assigned_to=cast.path1)
        report = drafted_report(case, cast.path1, f"Text {i}.")
        classification = Classification.objects.create(
            section=report.sections.get(), label_set=category, scores={labels[0]: 0.5, labels[1]: 0.5},
            model_label=labels[1], model_confidence=0.5, bundle=bundle_row("tiny@1"))
        services.decide(classification, label, cast.path1)
        services.sign(report, cast.path1)
    pairs = training.pair_source()
    assert sorted(p.label for p in pairs) == sorted([labels[0], labels[0], labels[1]])
    readiness = training.training_readiness()
    assert readiness.basis == "diagnosis category" and readiness.counts == {labels[0]: 2, labels[1]: 1}
    # One case without a decided category: every case falls back to its organ.
    signed_report(case_factory(assigned_to=cast.path1), cast.path1, "No category decided.")
    assert training.training_readiness().basis == "organ"


def test_heldout_split_is_by_case_stratified_and_deterministic():
    classes = {case: ("colon" if case % 2 else "stomach") for case in range(1, 21)}
    held = training.heldout_cases(classes, seed=0)
    assert held == training.heldout_cases(dict(reversed(classes.items())), seed=0)
    assert sum(classes[c] == "colon" for c in held) == sum(classes[c] == "stomach" for c in held) == 2
    assert len(training.heldout_cases({1: "a", 2: "a", 3: "b"}, seed=0)) == 1  # one case of "a" stays to train on


# --- the comparison, by the real worker ------------------------------------------------------------------
@pytest.mark.worker
def test_training_job_compares_both_bundles_on_the_same_heldout_cases(
    transactional_db, tiny_bundle_dir, case_factory, cast, tmp_path, client_for
):
    from django.test import override_settings

    var = tmp_path / "var"
    with override_settings(VAR_DIR=var, MODEL_BUNDLE_DIR=tmp_path / "models"):
        runtime.forget_models()
        base = pipeline.register_bundle(tiny_bundle_dir, activate=True)
        cases = _signed_out(case_factory, cast.path1, base, {"Colon, sigmoid": 5, "Stomach, antrum": 5})
        worker = start_worker(name="flywheel", extra_env={"PATHALIGN_VAR_DIR": str(var),
                                                          "PATHALIGN_MODEL_DIR": str(tmp_path / "models")})
        try:
            from django.db import transaction

            with transaction.atomic():
                job = training.queue_training(cast.admin, "local", "flywheel-1", TINY_TRAINING)
            done = wait_for(lambda: Job.objects.filter(pk=job.pk, state__in=[JobState.SUCCEEDED,
                                                                              JobState.FAILED]).first(),
                            timeout=120, message="the training job")
        finally:
            stop_worker(worker)
        assert done.state == JobState.SUCCEEDED, done.error
        bundle = ModelBundle.objects.get(name="local", version="flywheel-1")
        comparison = bundle.eval_figures["heldout_comparison"]
        assert comparison["active_bundle_id"] == base.pk and comparison["class_basis"] == "organ"
        held = set(comparison["heldout_case_ids"])
        classes = {case.pk: case.parts.get().organ for case in cases}
        assert held == training.heldout_cases(classes, seed=0)  # deterministic, by case, stratified
        assert comparison["heldout_per_class"] == {"colon": 1, "stomach": 1} and comparison["heldout_cases"] == 2
        assert comparison["new"]["n"] == comparison["active"]["n"] == 2
        assert bundle.training["splits"] == {"train": 8, "test": 2}  # the held-out cases were not trained on
        # Both figures are what each bundle scores on exactly those held-out slides.
        from inference.features import SlideFeatures
        from inference.train import Example

        pairs = [p for p in training.pair_source() if p.case_id in held]
        examples = [Example(SlideFeatures.load(runtime.features_path(Slide.objects.get(pk=p.slide_id), base))
                            .features, p.text, {"case": p.case_id, "label": classes[p.case_id]}) for p in pairs]
        labels = sorted(set(classes.values()))
        for key, model_bundle in (("new", bundle), ("active", base)):
            again = training.heldout_figures(runtime.load_model(model_bundle.path, "cpu"), examples, labels)
            assert again["i2t_r1"] == comparison[key]["i2t_r1"]
            assert again["label_accuracy"] == comparison[key]["label_accuracy"]
        page = client_for(cast.admin).get(f"/models/{bundle.pk}/").content.decode()
        assert "held-out slides" in page and "The new bundle finds the right report first" in page
        runtime.forget_models()


# --- in Chromium -----------------------------------------------------------------------------------------
@pytest.mark.browser
def test_bundle_page_in_the_browser_states_both_bundles_and_overrides_with_a_reason(
    transactional_db, tiny_bundle_dir, second_bundle_dir, tmp_path, settings, cast, page_for
):
    from playwright.sync_api import expect

    settings.VAR_DIR = tmp_path / "var"
    runtime.forget_models()
    base = pipeline.register_bundle(tiny_bundle_dir, activate=True)
    worse = _bundle_with_comparison(tmp_path, second_bundle_dir, base, new_r1=0.6, active_r1=0.9)
    page = page_for(cast.admin)
    page.goto(f"/models/{worse.pk}/")
    expect(page.locator("#comparison-words")).to_contain_text(
        f"The new bundle finds the right report first for 6 of 10 held-out slides; the active one ({base.key}) "
        "for 9 of 10: worse by 30 points.")
    expect(page.locator("#gate")).to_contain_text("needs an override")
    assert page.get_by_role("button", name="Make active", exact=True).count() == 0
    page.fill("textarea[name=override_reason]", "Reviewed the held-out cases with the lab director.")
    page.get_by_role("button", name="Make active anyway").click()
    expect(page.locator("h1")).to_contain_text("active")
    worse.refresh_from_db()
    assert worse.is_active
    assert AuditEvent.objects.filter(action="model_activate_override", object_id=str(worse.pk)).exists()
    runtime.forget_models()
