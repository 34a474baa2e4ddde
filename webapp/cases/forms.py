from django import forms

from webapp.accounts.models import Role, User

from .models import Case, CaseStatus, Part, Priority, SpecimenRule


class CaseForm(forms.ModelForm):
    class Meta:
        model = Case
        fields = ("accession_number", "patient_pseudonym", "clinical_history", "priority", "received_date")
        widgets = {
            "received_date": forms.DateInput(attrs={"type": "date"}),
            "clinical_history": forms.Textarea(attrs={"rows": 3}),
        }

    def clean_accession_number(self):
        return self.cleaned_data["accession_number"].strip().upper()


class PartForm(forms.ModelForm):
    class Meta:
        model = Part
        fields = ("label", "site", "procedure", "description")
        widgets = {"description": forms.Textarea(attrs={"rows": 2})}

    def __init__(self, *args, case: Case, **kwargs):
        super().__init__(*args, **kwargs)
        self.case = case
        if not self.instance.pk:
            self.initial.setdefault("label", case.next_part_label())

    def clean_label(self):
        label = self.cleaned_data["label"].strip().upper()
        clash = self.case.parts.filter(label=label).exclude(pk=self.instance.pk)
        if clash.exists():
            raise forms.ValidationError(f"Part {label} already exists on this case.")
        return label


class AssignForm(forms.Form):
    pathologist = forms.ModelChoiceField(
        queryset=User.objects.filter(role=Role.PATHOLOGIST, is_active=True).order_by("username"),
        required=False,
        empty_label="(unassigned)",
    )


class CaseFilterForm(forms.Form):
    q = forms.CharField(required=False, label="Search", widget=forms.TextInput(
        attrs={"placeholder": "Accession, pseudonym or site", "type": "search"}))
    status = forms.ChoiceField(required=False, choices=[("", "Any status"), *CaseStatus.choices])
    priority = forms.ChoiceField(required=False, choices=[("", "Any priority"), *Priority.choices])
    assigned_to = forms.ModelChoiceField(
        required=False, queryset=User.objects.filter(role=Role.PATHOLOGIST), empty_label="Anyone"
    )
    received_from = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    received_to = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))


class SpecimenRuleForm(forms.ModelForm):
    """One organ or procedure-family rule (cases.specimens); families are stored lower case, as the defaults."""

    class Meta:
        model = SpecimenRule
        fields = ("field", "contains", "family", "order")

    def clean_contains(self):
        return " ".join(self.cleaned_data["contains"].split())

    def clean_family(self):
        return " ".join(self.cleaned_data["family"].split()).lower()

    def clean(self):
        data = super().clean()
        if data.get("field") and data.get("contains") and SpecimenRule.objects.filter(
                field=data["field"], contains__iexact=data["contains"]).exists():
            self.add_error("contains", f"A {data['field']} rule for '{data['contains']}' already exists; delete it "
                                       "first to change its family.")
        return data
