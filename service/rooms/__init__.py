"""The rooms app. `rooms.publish(room, data)` and `await rooms.apublish(room, data)` publish into a
room from Django code (rooms.publishing); they are imported when called, so that importing this
package (the settings do) loads nothing of Django's."""


def publish(room, data, **options):
    from .publishing import publish as publish_now

    return publish_now(room, data, **options)


async def apublish(room, data, **options):
    from .publishing import apublish as publish_now

    return await publish_now(room, data, **options)
