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
        fields = ("name", "description", "is_triage", "active", "order")


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
        fields = ("name", "prompts", "alert", "order")


LabelFormSet = inlineformset_factory(LabelSet, Label, form=LabelForm, extra=2, can_delete=True)
