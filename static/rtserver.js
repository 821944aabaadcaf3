/**
 * rtserver.js: the browser client of rtserver's channel sockets (no dependencies, no
 * build step; an ES module). It speaks the protocol of
 * rtserver.websocket.channels.ChannelSocket.
 *
 *   import { connect } from "/rtserver.js";
 *
 *   const rt = connect("/ws");                       // a path, or a ws:// / wss:// URL
 *   const room = rt.join("room:lobby", { history: 50 });
 *   room.on("message", (msg) => show(msg.data));     // {channel, id, data}
 *   room.on("presence", (members) => list(members)); // {memberId: info}
 *   room.publish({ text: "hi" }).catch((err) => alert(err.message));
 *   rt.on("reconnecting", ({ delay }) => banner(`reconnecting in ${delay} ms`));
 *
 * connect(url, options) -> Client. Options (all optional):
 *   minDelay 500, maxDelay 10000   reconnect backoff in ms: doubles from minDelay up
 *                                   to maxDelay, each wait randomised (jitter: 50-100 %)
 *                                   so a restarted server is not hit by everyone at once
 *   pingInterval 15000             ms between two keepalive pings ({"op": "ping"})
 *   deadAfter 35000                ms without any message before the connection counts
 *                                   as dead (watchdog) and is replaced
 *   requestTimeout 10000           ms a publish/join waits for its answer
 *   shouldReconnect(closeEvent)    false to stop; by default every close reconnects
 *                                   except 1008 (policy) and 4400-4499 (the server
 *                                   refused this user: do not retry); 4401 never
 *                                   reconnects, whatever this says
 *
 * Signed out: the server closes a socket with 4401 when the session it was opened
 * with ended (a logout in another tab, expiry, a new session id after a login; see
 * rtserver.WebSocket.session_ended) or refuses a visitor who is not logged in. The
 * client then emits "signed-out" {code, reason}, then "closed", and never reconnects
 * (its cookie is dead): send the user to the login page.
 *
 * Client
 *   .join(channel, {history: n}) -> Channel   join (again after every reconnect)
 *   .channel(name) -> Channel | undefined
 *   .on(event, fn) / .off(event, fn)
 *   .send(object)                    a raw request (false when not connected)
 *   .close()                         close for good (no reconnect)
 *   .connected                       true while the socket is open
 *   events: "open" {reconnected}, "message" {channel, id, data}, "reconnecting"
 *   {attempt, delay, code}, "gap" {channel, from, to}, "signed-out" {code, reason}
 *   (4401: the session ended; then "closed"), "closed" {code, reason} (final),
 *   "error" {error, message, channel} (a server error not tied to a request)
 *
 * Channel
 *   .publish(data) -> Promise<{id}>  rejects with an Error carrying .code
 *                                    ("rate-limited", "forbidden", "disconnected", ...)
 *   .leave()
 *   .members                         {memberId: info}, kept up to date
 *   .lastId                          the newest message id seen (resume point)
 *   events: "message", "presence" (members, event), "gap" {from, to}, "joined",
 *   "error" {error, message}
 *
 * Resume: the client remembers the last id seen per channel and, after a reconnect,
 * joins with {"since": lastId}: the server sends exactly what was missed, in order,
 * then live messages; ids at or below lastId are dropped as a second guard. When the
 * server no longer keeps what was missed, a "gap" event says which ids were lost.
 */

/** A minimal event emitter; listeners that throw do not stop the others. */
class Emitter {
  constructor() {
    this._listeners = new Map();
  }
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return this;
  }
  off(event, fn) {
    this._listeners.get(event)?.delete(fn);
    return this;
  }
  emit(event, ...args) {
    for (const fn of this._listeners.get(event) ?? []) {
      try {
        fn(...args);
      } catch (err) {
        console.error(`rtserver.js: a "${event}" listener failed`, err);
      }
    }
  }
}

/** An error answered by the server (or "disconnected"/"timeout" from the client). */
export class ChannelError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "ChannelError";
    this.code = code;
  }
}

/** One joined channel: its messages, presence and resume point. */
export class Channel extends Emitter {
  constructor(client, name, options) {
    super();
    this.client = client;
    this.name = name;
    this.history = options.history ?? 0;
    this.members = {};
    this.lastId = null;
    this.joined = false;
  }

  /** Publish data (anything JSON-able); resolves with {id} once the hub has it. */
  publish(data) {
    return this.client._request({ op: "publish", channel: this.name, data });
  }

  /** Leave the channel (and stop rejoining it after reconnects). */
  leave() {
    this.client._channels.delete(this.name);
    this.joined = false;
    return this.client._request({ op: "leave", channel: this.name }).catch(() => {});
  }

  _joinRequest() {
    // After a reconnect: exactly what was missed. First time: the recent history.
    return this.lastId !== null
      ? { op: "join", channel: this.name, since: this.lastId }
      : { op: "join", channel: this.name, history: this.history };
  }

  _receive(msg) {
    if (msg.gap) {
      this.lastId = Math.max(this.lastId ?? 0, msg.gap.to);
      const gap = { channel: this.name, from: msg.gap.from, to: msg.gap.to };
      this.emit("gap", gap);
      this.client.emit("gap", gap);
      return;
    }
    if (typeof msg.id !== "number") return;
    if (this.lastId !== null && msg.id <= this.lastId) return; // already seen
    this.lastId = msg.id;
    if (msg.presence) {
      const { action, member, info } = msg.presence;
      if (action === "join") this.members[member] = info;
      else delete this.members[member];
      this.emit("presence", this.members, msg.presence);
      return;
    }
    this.emit("message", msg);
    this.client.emit("message", msg);
  }

  _joined(reply) {
    this.joined = true;
    if (typeof reply.last === "number") this.lastId = Math.max(this.lastId ?? 0, reply.last);
    this.members = reply.presence ?? {};
    this.emit("joined", reply);
    this.emit("presence", this.members, null);
  }
}

const DEFAULTS = {
  minDelay: 500,
  maxDelay: 10000,
  pingInterval: 15000,
  deadAfter: 35000,
  requestTimeout: 10000,
  shouldReconnect: (event) => !(event.code === 1008 || (event.code >= 4400 && event.code < 4500)),
};

/** The close code of a socket whose session ended (rtserver.websocket.plugin.SESSION_ENDED_CODE). */
export const SIGNED_OUT = 4401;

/** A reconnecting connection to a ChannelSocket endpoint. */
export class Client extends Emitter {
  constructor(url, options = {}) {
    super();
    const absolute = new URL(url, globalThis.location?.href);
    if (absolute.protocol === "http:") absolute.protocol = "ws:";
    if (absolute.protocol === "https:") absolute.protocol = "wss:";
    this.url = absolute.href;
    this.options = { ...DEFAULTS, ...options };
    this._channels = new Map();
    this._pending = new Map(); // ref -> {resolve, reject, timer}
    this._nextRef = 1;
    this._attempt = 0;
    this._opened = false; // ever opened (the next open is a reconnection)
    this._closedForGood = false;
    this._ws = null;
    this._timers = {};
    // Coming back online (or to the tab) is a good moment to retry at once.
    globalThis.addEventListener?.("online", () => this._retryNow());
    this._open();
  }

  get connected() {
    return this._ws !== null && this._ws.readyState === WebSocket.OPEN;
  }

  join(name, options = {}) {
    let channel = this._channels.get(name);
    if (!channel) {
      channel = new Channel(this, name, options);
      this._channels.set(name, channel);
      if (this.connected) this._sendJoin(channel);
    }
    return channel;
  }

  channel(name) {
    return this._channels.get(name);
  }

  send(request) {
    if (!this.connected) return false;
    this._ws.send(JSON.stringify(request));
    return true;
  }

  close() {
    this._closedForGood = true;
    clearTimeout(this._timers.retry);
    this._stopKeepalive();
    if (this._ws) this._ws.close(1000, "bye");
    this._failPending("disconnected", "Closed.");
    this.emit("closed", { code: 1000, reason: "closed by the client" });
  }

  // -- internals ------------------------------------------------------------------

  _open() {
    clearTimeout(this._timers.retry);
    const ws = new WebSocket(this.url);
    this._ws = ws;
    ws.onopen = () => {
      this._attempt = 0;
      this._startKeepalive();
      const reconnected = this._opened;
      this._opened = true;
      for (const channel of this._channels.values()) this._sendJoin(channel);
      this.emit("open", { reconnected });
    };
    ws.onmessage = (event) => {
      this._lastSeen = Date.now();
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch {
        return; // not ours (binary or non-JSON): ignore
      }
      this._dispatch(msg);
    };
    ws.onclose = (event) => this._lost(ws, event.code, event.reason);
    // An error is always followed by a close event; nothing to do here.
    ws.onerror = () => {};
  }

  _dispatch(msg) {
    if (msg.op) {
      const waiting = msg.ref !== undefined ? this._pending.get(msg.ref) : undefined;
      if (waiting) {
        this._pending.delete(msg.ref);
        clearTimeout(waiting.timer);
      }
      const channel = msg.channel !== undefined ? this._channels.get(msg.channel) : undefined;
      if (msg.op === "joined" && channel) channel._joined(msg);
      if (msg.op === "error") {
        if (waiting) waiting.reject(new ChannelError(msg.error, msg.message));
        else {
          channel?.emit("error", msg);
          this.emit("error", msg);
        }
      } else if (waiting) waiting.resolve(msg);
      return;
    }
    const channel = this._channels.get(msg.channel);
    if (channel) channel._receive(msg);
  }

  _sendJoin(channel) {
    this._request(channel._joinRequest()).catch((err) => {
      channel.emit("error", { error: err.code, message: err.message });
    });
  }

  _request(request) {
    return new Promise((resolve, reject) => {
      if (!this.connected) {
        reject(new ChannelError("disconnected", "Not connected: reconnecting…"));
        return;
      }
      const ref = this._nextRef++;
      const timer = setTimeout(() => {
        this._pending.delete(ref);
        reject(new ChannelError("timeout", "No answer from the server."));
      }, this.options.requestTimeout);
      this._pending.set(ref, { resolve, reject, timer });
      this.send({ ...request, ref });
    });
  }

  _failPending(code, message) {
    for (const { reject, timer } of this._pending.values()) {
      clearTimeout(timer);
      reject(new ChannelError(code, message));
    }
    this._pending.clear();
  }

  _lost(ws, code, reason) {
    if (ws !== this._ws) return; // an old socket the watchdog already replaced
    this._ws = null;
    this._stopKeepalive();
    this._failPending("disconnected", "Connection lost.");
    for (const channel of this._channels.values()) channel.joined = false;
    if (this._closedForGood) return;
    if (code === SIGNED_OUT) {
      // The session is gone: reconnecting would only be refused (or be someone else).
      this._closedForGood = true;
      this.emit("signed-out", { code, reason });
      this.emit("closed", { code, reason });
      return;
    }
    if (!this.options.shouldReconnect({ code, reason })) {
      this._closedForGood = true;
      this.emit("closed", { code, reason });
      return;
    }
    // Exponential backoff with jitter: 50-100 % of min(maxDelay, minDelay * 2^n).
    const ceiling = Math.min(this.options.maxDelay, this.options.minDelay * 2 ** this._attempt);
    const delay = Math.round(ceiling * (0.5 + Math.random() / 2));
    this._attempt += 1;
    this.emit("reconnecting", { attempt: this._attempt, delay, code });
    this._timers.retry = setTimeout(() => this._open(), delay);
  }

  _retryNow() {
    if (!this._closedForGood && this._ws === null) this._open();
  }

  _startKeepalive() {
    this._lastSeen = Date.now();
    this._timers.ping = setInterval(() => {
      if (Date.now() - this._lastSeen > this.options.deadAfter) {
        // Watchdog: no pong, no message. The TCP connection may be half-dead (a
        // sleeping laptop, a NAT that forgot us) and its close could hang: drop it.
        const ws = this._ws;
        this._lost(ws, 4000, "watchdog: no traffic");
        ws.onclose = ws.onmessage = null;
        ws.close();
        return;
      }
      this.send({ op: "ping" });
    }, this.options.pingInterval);
  }

  _stopKeepalive() {
    clearInterval(this._timers.ping);
  }
}

/** Open a reconnecting client: connect("/ws") or connect("wss://host/ws", options). */
export function connect(url, options) {
  return new Client(url, options);
}
