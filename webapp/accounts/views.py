"""Login is Django's (throttled by django-axes); lab admins manage users here."""
from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods

from .decorators import lab_admin_required
from .forms import EditUserForm, NewUserForm
from .models import User


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
        messages.success(request, f"User {user.username} created.")
        return redirect("user_list")
    return render(request, "accounts/user_form.html", {"form": form, "title": "New user"})


@lab_admin_required
@require_http_methods(["GET", "POST"])
def user_edit(request, user_id: int):
    target = get_object_or_404(User, pk=user_id)
    form = EditUserForm(request.POST or None, instance=target)
    if request.method == "POST" and form.is_valid():
        if target == request.user and not form.cleaned_data["is_active"]:
            form.add_error("is_active", "You cannot deactivate your own account.")
        else:
            form.save()
            messages.success(request, f"User {target.username} updated.")
            return redirect("user_list")
    return render(request, "accounts/user_form.html", {"form": form, "title": f"Edit {target.username}"})
