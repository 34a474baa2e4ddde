"""Filters for the audit log. Case accession numbers are typed into a POSTed form and turned into case ids,
so they never appear in a URL (and so never in a proxy's or the server's access log)."""
from __future__ import annotations

from django import forms

from webapp.accounts.models import User

from .case_directory import case_directory
from .models import AuditEvent


def _action_choices() -> list[tuple[str, str]]:
    actions = AuditEvent.objects.order_by("action").values_list("action", flat=True).distinct()
    return [("", "Any action"), *((action, action) for action in actions)]


class AuditFilterForm(forms.Form):
    user = forms.ModelChoiceField(queryset=User.objects.order_by("username"), required=False,
                                  empty_label="Anyone", to_field_name="pk")
    action = forms.ChoiceField(required=False, choices=())
    accession = forms.CharField(required=False, max_length=16, label="Case accession",
                                widget=forms.TextInput(attrs={"placeholder": "S26-00042", "autocomplete": "off"}))
    date_from = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}))

    def __init__(self, *args, user: User, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["action"].choices = _action_choices()
        self.user = user  # accessions resolve only to cases this user may see
        self.case_id: int | None = None

    def clean_action(self) -> str:
        return self.cleaned_data.get("action") or ""

    def clean_accession(self) -> str:
        accession = (self.cleaned_data.get("accession") or "").strip().upper()
        if accession:
            case_id = case_directory().find(self.user, accession)
            if case_id is None:
                raise forms.ValidationError("No case has that accession number.")
            self.case_id = case_id
        return accession

    def clean(self):
        data = super().clean()
        if data.get("date_from") and data.get("date_to") and data["date_from"] > data["date_to"]:
            raise forms.ValidationError("The start date is after the end date.")
        return data

    def query_params(self) -> dict[str, str]:
        """The filters as GET parameters: ids and dates only, never an accession number."""
        data = self.cleaned_data
        params = {
            "user": str(data["user"].pk) if data.get("user") else "",
            "action": data.get("action") or "",
            "case": str(self.case_id) if self.case_id else "",
            "date_from": data["date_from"].isoformat() if data.get("date_from") else "",
            "date_to": data["date_to"].isoformat() if data.get("date_to") else "",
        }
        return {key: value for key, value in params.items() if value}


class CaseLookupForm(forms.Form):
    accession = forms.CharField(max_length=16, label="Case accession",
                                widget=forms.TextInput(attrs={"placeholder": "S26-00042", "autocomplete": "off"}))

    def clean_accession(self) -> str:
        return self.cleaned_data["accession"].strip().upper()
