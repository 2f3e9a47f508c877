/**
 * Chat across gateways: assign through placement, join one room, publish `chat` messages to it
 * and show every `chat` event the room delivers. Query parameters: `placement` (placement's
 * HTTP URL, default http://127.0.0.1:7000), `room` (default `lobby`), `name`.
 */
import { connect } from "../src/switchyard.mjs";

const params = new URLSearchParams(location.search);
const placementUrl = params.get("placement") ?? "http://127.0.0.1:7000";
const room = params.get("room") ?? "lobby";
const $ = (id) => document.getElementById(id);
$("name").value = params.get("name") ?? `guest${Math.floor(Math.random() * 1000)}`;

function show(text) {
  const li = document.createElement("li");
  li.textContent = text;
  $("log").append(li);
}

const client = connect({ placementUrl });
window.switchyard = client;

async function joined(info, verb) {
  const ack = await client.join(room);
  $("status").textContent = ack.ok
    ? `${verb} to ${info.nodeId} (${info.url}), room ${room}`
    : `joined nothing: ${ack.error}`;
  $("status").dataset.node = info.nodeId;
  $("status").dataset.ready = String(ack.ok);
  $("send").disabled = !ack.ok;
}

client.on("connect", (info) => joined(info, "connected"));
// Rooms are re-joined by the client itself; only the status line changes.
client.on("reconnected", (info) => {
  $("status").textContent = `reconnected to ${info.nodeId} (${info.url}), room ${room}`;
  $("status").dataset.node = info.nodeId;
});
client.on("disconnect", (reason) => {
  $("status").textContent = `disconnected (${reason}), re-assigning…`;
});
client.on("chat", (data, meta) => show(`[${meta?.room ?? "?"}] ${data?.from}: ${data?.text}`));

$("form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = $("text").value.trim();
  if (!text) return;
  $("text").value = "";
  const ack = await client.publish(room, "chat", { from: $("name").value, text });
  if (!ack.ok) show(`not sent: ${ack.error}`);
});
