from django import forms
from django.contrib.auth.forms import PasswordChangeForm, UserCreationForm

from . import reauth
from .models import User


class ThrottledPasswordChangeForm(PasswordChangeForm):
    """The old password is checked through the lockout (reauth.check_password), not user.check_password."""

    def __init__(self, user, *args, request=None, **kwargs):
        super().__init__(user, *args, **kwargs)
        self.request = request

    def clean_old_password(self):
        old_password = self.cleaned_data["old_password"]
        if not reauth.check_password(self.request, self.user, old_password):
            if reauth.locked_out(self.request):
                raise forms.ValidationError(reauth.LOCKED_MESSAGE, code="locked_out")
            raise forms.ValidationError(self.error_messages["password_incorrect"], code="password_incorrect")
        return old_password


class NewUserForm(UserCreationForm):
    class Meta:
        model = User
        fields = ("username", "first_name", "last_name", "credentials", "email", "role")


class EditUserForm(forms.ModelForm):
    class Meta:
        model = User
        fields = ("first_name", "last_name", "credentials", "email", "role", "is_active")
