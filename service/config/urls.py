from pathlib import Path

from django.conf import settings
from django.urls import path

from rooms.views import index, static_file

urlpatterns = [
    path("", index, name="index"),
    path("static/<str:name>", static_file, name="static"),
]

if settings.ACCOUNTS_ENABLED:  # with a database: users, tickets and the admin (docs/accounts.md)
    import django.contrib.admin
    from django.contrib import admin
    from django.contrib.auth import views as auth_views
    from django.views.static import serve

    from members.api import publish_message
    from members.views import ticket

    ADMIN_STATIC = Path(django.contrib.admin.__file__).resolve().parent / "static" / "admin"
    urlpatterns += [
        path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
        path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
        path("ticket/", ticket, name="ticket"),
        path("api/rooms/<str:room>/messages/", publish_message, name="publish"),
        path("admin/", admin.site.urls),
        # The admin's own CSS and JavaScript, from the installed Django (no collectstatic in the image).
        path("static/admin/<path:path>", serve, {"document_root": ADMIN_STATIC}),
    ]
