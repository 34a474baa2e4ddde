from django import forms


class SlideFieldsForm(forms.Form):
    stain = forms.CharField(max_length=60, initial="H&E")
    block_label = forms.CharField(max_length=20, required=False)


class DropImportForm(SlideFieldsForm):
    filename = forms.CharField(max_length=255)
    part = forms.IntegerField()
