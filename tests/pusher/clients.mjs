// Drives unmodified laravel-echo and pusher-js clients for tests/test_pusher_clients.py.
//
// Started as `node clients.mjs '<json config>'` with config {host, port, key, base, debug}
// (base = the server's http://host:port, for the auth endpoints; debug = pusher-js's
// log on stderr). Reads one JSON
// command per line on stdin and prints one JSON observation per line on stdout:
//
//   {"do":"connect","client":"a","via":"echo"|"pusher","token":"token-alice"|null,
//    "tamper":["private-…"]}          -> {"on":"state",…} lines as the connection moves
//   {"do":"signin","client":"a"}        -> {"on":"signin_success","user_data":{…}}
//   {"do":"subscribe","client":"a","type":"public"|"private"|"presence","name":"x",
//    "events":["text-delta",…],"whispers":["typing"]}
//                                       -> {"on":"subscribed"|"subscription_error"|"event"|
//                                           "whisper"|"here"|"joining"|"leaving",…}
//   {"do":"whisper","client":"a","channel":"private-x","event":"typing","data":{…}}
//   {"do":"disconnect","client":"a"}    -> {"on":"state","current":"disconnected",…}
//   {"do":"state"|"socket_id","client":"a"} -> in the acknowledgement
//   {"do":"exit"}
// Also, unasked: {"on":"error","code",…} (pusher-js connection errors: pusher:error
// frames and close codes), {"on":"connecting_in","delay"} (seconds before a retry),
// {"on":"user_event",…} (#server-to-user-… events once signed in), {"on":"fatal",…}.
//
// Every command is acknowledged with {"on":"done","id":…} (or {"on":"failed",…}); every
// line carries "t", the Node clock in milliseconds.
// "via":"echo" is Laravel Echo (broadcaster "pusher", `Pusher` passed in its options,
// authEndpoint + auth.headers: the stock pusher-js "ajax" transport does the POST);
// "via":"pusher" is pusher-js alone with channelAuthorization/userAuthentication
// endpoints, or a customHandler when some channels must get a wrong signature.
import readline from "node:readline";

import Echo from "laravel-echo";
import Pusher from "pusher-js";

const config = JSON.parse(process.argv[2]);
if (config.debug) {
  Pusher.log = (message) => process.stderr.write(`${Date.now()} ${message}\n`);
}
const clients = new Map();

function out(obj) {
  process.stdout.write(JSON.stringify({ ...obj, t: Date.now() }) + "\n");
}

function errorCode(error) {
  // pusher-js reports `pusher:error` frames as {type, data: {code, message}}, close
  // codes the same way, and handshake refusals as {type: "WebSocketError", error: {…}}.
  const inner = error?.data?.code !== undefined ? error.data : error?.error?.data;
  return { type: error?.type ?? null, code: inner?.code ?? null, message: inner?.message ?? null };
}

function bearer(token) {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function pusherOptions(token) {
  return {
    wsHost: config.host,
    wsPort: config.port,
    forceTLS: false,
    enabledTransports: ["ws"],
    cluster: "",
    userAuthentication: {
      endpoint: `${config.base}/broadcasting/user-auth`,
      transport: "ajax",
      headers: bearer(token),
    },
  };
}

function tamperingAuthorizer(token, tamper) {
  // Asks the real endpoint, then spoils the signature of the channels in `tamper`.
  return async ({ socketId, channelName }, callback) => {
    try {
      const response = await fetch(`${config.base}/broadcasting/auth`, {
        method: "POST",
        headers: {
          "Content-Type": "application/x-www-form-urlencoded",
          ...bearer(token),
        },
        body: new URLSearchParams({ socket_id: socketId, channel_name: channelName }),
      });
      if (response.status !== 200) {
        callback(new Error(`auth endpoint answered ${response.status}`), null);
        return;
      }
      const body = await response.json();
      if (tamper.includes(channelName)) {
        body.auth = `${config.key}:${"0".repeat(64)}`;
      }
      callback(null, body);
    } catch (error) {
      callback(error, null);
    }
  };
}

function connect(cmd) {
  const name = cmd.client;
  const options = pusherOptions(cmd.token);
  let echo = null;
  let pusher;
  if (cmd.via === "echo") {
    echo = new Echo({
      broadcaster: "pusher",
      key: config.key,
      ...options,
      authEndpoint: `${config.base}/broadcasting/auth`,
      auth: { headers: bearer(cmd.token) },
      Pusher,
    });
    pusher = echo.connector.pusher;
  } else {
    const channelAuthorization = cmd.tamper
      ? { customHandler: tamperingAuthorizer(cmd.token, cmd.tamper) }
      : {
          endpoint: `${config.base}/broadcasting/auth`,
          transport: "ajax",
          headers: bearer(cmd.token),
        };
    pusher = new Pusher(config.key, { ...options, channelAuthorization });
  }
  const connection = pusher.connection;
  connection.bind("state_change", ({ previous, current }) => {
    out({ on: "state", client: name, previous, current, socket_id: connection.socket_id ?? null });
  });
  connection.bind("error", (error) => {
    out({ on: "error", client: name, ...errorCode(error) });
  });
  connection.bind("connecting_in", (delay) => {
    out({ on: "connecting_in", client: name, delay });
  });
  connection.bind("message", (message) => {
    if (message.event === "pusher:signin_success") {
      out({ on: "signin_success", client: name, user_data: JSON.parse(message.data.user_data) });
    }
  });
  pusher.user.bind_global((event, data) => {
    out({ on: "user_event", client: name, event, data });
  });
  clients.set(name, { echo, pusher, channels: new Map() });
}

function observe(client, channel, fullName, cmd) {
  const name = cmd.client;
  const report = (on, extra) => out({ on, client: name, channel: fullName, ...extra });
  const bind = (event, callback) => {
    if (client.echo) {
      channel.listen(`.${event}`, callback); // leading dot: the raw event name
    } else {
      channel.bind(event, callback);
    }
  };
  if (client.echo) {
    channel.subscribed(() => report("subscribed", {}));
    channel.error((error) => report("subscription_error", error));
  } else {
    channel.bind("pusher:subscription_succeeded", () => report("subscribed", {}));
    channel.bind("pusher:subscription_error", (error) => report("subscription_error", error));
  }
  for (const event of cmd.events ?? []) {
    bind(event, (data, metadata) =>
      report("event", { event, data, user_id: metadata?.user_id ?? null }),
    );
  }
  for (const whisper of cmd.whispers ?? []) {
    const callback = (data, metadata) =>
      report("whisper", { event: whisper, data, user_id: metadata?.user_id ?? null });
    if (client.echo) {
      channel.listenForWhisper(whisper, callback);
    } else {
      channel.bind(`client-${whisper}`, callback);
    }
  }
  if (cmd.type === "presence") {
    if (client.echo) {
      channel.here((members) => report("here", { members }));
      channel.joining((member) => report("joining", { member }));
      channel.leaving((member) => report("leaving", { member }));
    } else {
      channel.bind("pusher:subscription_succeeded", (members) => {
        const list = [];
        members.each((member) => list.push(member.info));
        report("here", { members: list });
      });
      channel.bind("pusher:member_added", (member) => report("joining", { member: member.info }));
      channel.bind("pusher:member_removed", (member) => report("leaving", { member: member.info }));
    }
  }
}

function subscribe(cmd) {
  const client = clients.get(cmd.client);
  const prefix = { public: "", private: "private-", presence: "presence-" }[cmd.type];
  const fullName = prefix + cmd.name;
  let channel;
  if (client.echo) {
    const echo = client.echo;
    const open = {
      public: () => echo.channel(cmd.name),
      private: () => echo.private(cmd.name), // "private-" + name, authorized over ajax
      presence: () => echo.join(cmd.name), // "presence-" + name
    };
    channel = open[cmd.type]();
  } else {
    channel = client.pusher.subscribe(fullName);
  }
  client.channels.set(fullName, channel);
  observe(client, channel, fullName, cmd);
}

function whisper(cmd) {
  const client = clients.get(cmd.client);
  const channel = client.channels.get(cmd.channel);
  if (client.echo) {
    channel.whisper(cmd.event, cmd.data);
  } else {
    channel.trigger(`client-${cmd.event}`, cmd.data);
  }
}

function disconnect(cmd) {
  const client = clients.get(cmd.client);
  if (client.echo) {
    client.echo.disconnect();
  } else {
    client.pusher.disconnect();
  }
}

const commands = {
  connect,
  subscribe,
  whisper,
  disconnect,
  signin: (cmd) => clients.get(cmd.client).pusher.signin(),
  socket_id: (cmd) => ({ socket_id: clients.get(cmd.client).pusher.connection.socket_id }),
  state: (cmd) => ({ state: clients.get(cmd.client).pusher.connection.state }),
  exit: () => {
    for (const client of clients.values()) {
      client.pusher.disconnect();
    }
    out({ on: "bye" });
    process.exit(0);
  },
};

process.on("uncaughtException", (error) => {
  out({ on: "fatal", error: String(error?.stack ?? error) });
});
process.on("unhandledRejection", (error) => {
  out({ on: "fatal", error: String(error?.stack ?? error) });
});

const lines = readline.createInterface({ input: process.stdin });
lines.on("line", (line) => {
  if (!line.trim()) {
    return;
  }
  const cmd = JSON.parse(line);
  try {
    const result = commands[cmd.do](cmd) ?? {};
    out({ on: "done", do: cmd.do, id: cmd.id ?? null, client: cmd.client ?? null, ...result });
  } catch (error) {
    out({ on: "failed", do: cmd.do, id: cmd.id ?? null, error: String(error?.stack ?? error) });
  }
});
lines.on("close", () => process.exit(0));
out({ on: "ready" });
