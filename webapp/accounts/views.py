"""Login is Django's (throttled by django-axes); lab admins manage users here (every change is audited:
accounts.signals.user_managed, recorded by the audit app)."""
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods

from . import reauth
from .decorators import lab_admin_required
from .forms import EditUserForm, NewUserForm, ThrottledPasswordChangeForm
from .models import User
from .signals import send_changes, snapshot, user_managed


class PasswordChange(auth_views.PasswordChangeView):
    """Django's password change, with the old password checked through the lockout (reauth)."""

    form_class = ThrottledPasswordChangeForm

    def get_form_kwargs(self):
        return {**super().get_form_kwargs(), "request": self.request}

    def form_valid(self, form):
        response = super().form_valid(form)
        user_managed.send(sender=User, request=self.request, target=self.request.user, action="password_changed",
                          before=None, after=None)
        return response

    def form_invalid(self, form):
        response = super().form_invalid(form)
        if reauth.locked_out(self.request):
            response.status_code = 429
        return response


@lab_admin_required
def user_list(request):
    users = User.objects.order_by("role", "username")
    return render(request, "accounts/user_list.html", {"users": users})


@lab_admin_required
@require_http_methods(["GET", "POST"])
def user_create(request):
    form = NewUserForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        send_changes(request, user, None)
        messages.success(request, f"User {user.username} created.")
        return redirect("user_list")
    return render(request, "accounts/user_form.html", {"form": form, "title": "New user"})


@lab_admin_required
@require_http_methods(["GET", "POST"])
def user_edit(request, user_id: int):
    target = get_object_or_404(User, pk=user_id)
    before = snapshot(target)
    form = EditUserForm(request.POST or None, instance=target)
    if request.method == "POST" and form.is_valid():
        if target == request.user and not form.cleaned_data["is_active"]:
            form.add_error("is_active", "You cannot deactivate your own account.")
        else:
            form.save()
            send_changes(request, target, before)
            messages.success(request, f"User {target.username} updated.")
            return redirect("user_list")
    return render(request, "accounts/user_form.html", {"form": form, "title": f"Edit {target.username}"})
