from __future__ import annotations

from django import forms
from django.forms import inlineformset_factory

from .models import Label, LabelSet, ReportKind


class FollowupForm(forms.Form):
    kind = forms.ChoiceField(choices=[(ReportKind.ADDENDUM, "Addendum"), (ReportKind.AMENDMENT, "Amendment")],
                             widget=forms.RadioSelect)
    reason = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}), max_length=2000)

    def clean(self):
        data = super().clean()
        if data.get("kind") == ReportKind.AMENDMENT and not (data.get("reason") or "").strip():
            self.add_error("reason", "An amendment needs a reason: say what changes and why.")
        return data


class LabelSetForm(forms.ModelForm):
    class Meta:
        model = LabelSet
        fields = ("name", "description", "is_triage", "active", "order", "confidence_threshold")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        field = self.fields["confidence_threshold"]
        field.required, field.min_value, field.max_value = False, 0.0, 1.0

    def clean_confidence_threshold(self):
        value = self.cleaned_data.get("confidence_threshold")
        return LabelSet._meta.get_field("confidence_threshold").default if value is None else value


class PromptsField(forms.CharField):
    """Prompts edited as one per line, stored as a list."""

    widget = forms.Textarea(attrs={"rows": 3, "cols": 50})

    def prepare_value(self, value):
        return "\n".join(value) if isinstance(value, list) else value

    def to_python(self, value):
        text = super().to_python(value) or ""
        return [line.strip() for line in text.splitlines() if line.strip()]


class LabelForm(forms.ModelForm):
    prompts = PromptsField(required=False, help_text="One prompt per line; averaged (a prompt ensemble).")

    class Meta:
        model = Label
        fields = ("name", "prompts", "alert", "order", "code_system", "code")
        widgets = {"code_system": forms.TextInput(attrs={"size": 22, "placeholder": "http://snomed.info/sct"}),
                   "code": forms.TextInput(attrs={"size": 10})}


LabelFormSet = inlineformset_factory(LabelSet, Label, form=LabelForm, extra=2, can_delete=True)
