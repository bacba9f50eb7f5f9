from django.conf import settings
from django.http import HttpResponse

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>wsapp</title></head>
<body>
<h1>wsapp: room <span id="room">lobby</span></h1>
<p>Served by color <b>%(color)s</b>, version %(version)s, replica %(replica)s.</p>
<pre id="log"></pre>
<form id="f"><input id="body" autocomplete="off"><button>Send</button></form>
<script>
const room = new URLSearchParams(location.search).get("room") || "lobby";
document.getElementById("room").textContent = room;
const log = (line) => { document.getElementById("log").textContent += line + "\\n"; };
function connect() {
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws/rooms/${room}/`);
  ws.onmessage = (e) => { const m = JSON.parse(e.data); log(JSON.stringify(m)); };
  ws.onclose = (e) => { log(`closed ${e.code}; reconnecting`);
    setTimeout(connect, e.code === 1012 ? 0 : 1000); };
  document.getElementById("f").onsubmit = (e) => {
    e.preventDefault();
    ws.send(JSON.stringify({type: "message", body: document.getElementById("body").value}));
  };
}
connect();
</script>
</body></html>
"""


def index(request):
    return HttpResponse(
        PAGE % {"color": settings.COLOR, "version": settings.APP_VERSION, "replica": settings.REPLICA}
    )
