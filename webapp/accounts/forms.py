from django import forms
from django.contrib.auth.forms import UserCreationForm

from .models import User


class NewUserForm(UserCreationForm):
    class Meta:
        model = User
        fields = ("username", "first_name", "last_name", "credentials", "email", "role")


class EditUserForm(forms.ModelForm):
    class Meta:
        model = User
        fields = ("first_name", "last_name", "credentials", "email", "role", "is_active")
