"""Forms: creating a study (lab admins) and rating an item (evaluators)."""
from __future__ import annotations

import secrets

from django import forms
from django.contrib.auth.hashers import UNUSABLE_PASSWORD_PREFIX

from webapp.accounts.models import Role, User

from . import sources
from .models import DEFAULT_RATER_INSTRUCTION, ERROR_REQUIRED_MAX, SCORE_ANCHORS, ErrorKind
from .studies import Selection, parse_accessions, unknown_accessions


class StudyForm(forms.Form):
    name = forms.CharField(max_length=200, help_text="Lab admins only: raters never see it.")
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False,
                                  help_text="Lab admins only: raters never see it.")
    rater_instruction = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4}), initial=DEFAULT_RATER_INSTRUCTION, max_length=4000,
        label="Instruction for raters", required=False,
        help_text="The only words about the study that raters see (blank: the standard instruction). Do not "
                  "name the sources or what is compared.",
    )
    show_overlays = forms.BooleanField(
        required=False, label="Let raters switch on the model's overlays (attention heatmap)",
        help_text="Off by default: an AI heatmap beside the text tells raters a model was involved.",
    )
    show_annotations = forms.BooleanField(
        required=False, label="Show raters the shared annotation layer",
        help_text="Off by default: marks drawn by pathologists can point raters at the answer. When on, "
                  "raters see the slide's shared layer read-only, without authors' names or comments; "
                  "personal layers never.",
    )
    paired = forms.BooleanField(
        required=False, initial=True, label="Pair the sources per slide",
        help_text="Only parts that have a text from every chosen source: each arm is rated on the same slides.",
    )
    drop_duplicates = forms.BooleanField(
        required=False, label="Leave out parts whose texts read the same in two arms",
        help_text="Otherwise such a study is refused.",
    )
    accept_unbalanced = forms.BooleanField(
        required=False, label="Build it even though the arms are unbalanced",
    )
    site = forms.CharField(label="Organ or site contains", required=False, max_length=100)
    received_from = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    received_to = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    signed_out_only = forms.BooleanField(required=False, initial=True, label="Signed-out cases only")
    accessions = forms.CharField(
        required=False, widget=forms.Textarea(attrs={"rows": 3, "placeholder": "S26-00042, S26-00043-B"}),
        help_text="Optional: only these cases (or case-part). The filters above still apply.",
    )
    sources = forms.MultipleChoiceField(widget=forms.CheckboxSelectMultiple, label="Texts to compare")
    evaluators = forms.ModelMultipleChoiceField(
        queryset=User.objects.none(), widget=forms.CheckboxSelectMultiple
    )
    raters_per_item = forms.IntegerField(min_value=1, max_value=20, initial=2)
    include_clinical_history = forms.BooleanField(required=False, label="Show raters the clinical history")
    seed = forms.IntegerField(required=False, min_value=0, help_text="Blank: a new random seed (kept).")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["sources"].choices = [
            (option.key, f"{option.label} ({option.parts} parts)") for option in sources.available_sources()
        ]
        # Accounts with an unusable password (the demo's simulated rater) cannot rate: not offered.
        self.fields["evaluators"].queryset = (
            User.objects.filter(role=Role.EVALUATOR, is_active=True).exclude(password__startswith=UNUSABLE_PASSWORD_PREFIX)
            .order_by("username")
        )

    def selection(self) -> Selection:
        data = self.cleaned_data
        return Selection(
            site=data.get("site", "").strip(), received_from=data.get("received_from"),
            received_to=data.get("received_to"), signed_out_only=bool(data.get("signed_out_only")),
            accessions=parse_accessions(data.get("accessions", "")),
        )

    def clean(self) -> dict:
        data = super().clean()
        evaluators = data.get("evaluators")
        per_item = data.get("raters_per_item")
        if evaluators is not None and per_item and per_item > len(evaluators):
            self.add_error("raters_per_item", f"At most {len(evaluators)} (the number of evaluators chosen).")
        if "accessions" in data:
            missing = unknown_accessions(Selection(accessions=parse_accessions(data["accessions"])))
            if missing:
                self.add_error("accessions", "Not found: " + ", ".join(missing[:10]))
        if data.get("seed") is None:
            data["seed"] = secrets.randbelow(2**31)
        return data


class RatingForm(forms.Form):
    score = forms.TypedChoiceField(
        choices=[(score, f"{score}") for score in sorted(SCORE_ANCHORS, reverse=True)], coerce=int,
        widget=forms.RadioSelect, error_messages={"required": "Choose a rating from 1 to 5."},
    )
    error_kind = forms.ChoiceField(choices=ErrorKind.choices, required=False, widget=forms.RadioSelect)
    comment = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False, max_length=4000)

    def clean(self) -> dict:
        data = super().clean()
        score = data.get("score")
        if score is not None and score <= ERROR_REQUIRED_MAX and not data.get("error_kind"):
            self.add_error("error_kind", "For a rating of 3 or less, choose the kind of error.")
        return data
