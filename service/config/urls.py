from django.urls import path

from rooms.views import index, static_file

urlpatterns = [
    path("", index, name="index"),
    path("static/<str:name>", static_file, name="static"),
]
