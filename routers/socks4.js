// @ts-check
// A SOCKS4 proxy (ProxyMachine's README example): the client names the destination itself.
// Request: version(1) = 4, command(1) = 1 (CONNECT), port(2, big-endian), IPv4 address(4),
// user id, NUL. SOCKS4a: an address of 0.0.0.x (x != 0) means a host name, NUL-terminated,
// follows the user id. The server answers 8 bytes: 0, status (0x5a granted, 0x5b rejected),
// then 6 ignored bytes. Anything the client sent after the request goes to the destination.
// Every destination is allowed here: in hosting mode the backend policy still applies.
const granted = '\0\x5a\0\0\0\0\0\0';
const rejected = '\0\x5b\0\0\0\0\0\0';

proxy((data) => {
  if (data.length < 9) return { noop: true };
  const version = data.charCodeAt(0);
  const command = data.charCodeAt(1);
  if (version !== 4 || command !== 1) return { close: rejected };
  const port = (data.charCodeAt(2) << 8) | data.charCodeAt(3);
  const ip = [data.charCodeAt(4), data.charCodeAt(5), data.charCodeAt(6), data.charCodeAt(7)];
  if (port === 0) return { close: rejected };

  let end = data.indexOf('\0', 8); // the user id's NUL
  if (end < 0) return data.length > 8 + 255 ? { close: rejected } : { noop: true };
  let host = ip.join('.');
  if (ip[0] === 0 && ip[1] === 0 && ip[2] === 0 && ip[3] !== 0) {
    const nameEnd = data.indexOf('\0', end + 1);
    if (nameEnd < 0) return data.length > end + 1 + 255 ? { close: rejected } : { noop: true };
    host = data.slice(end + 1, nameEnd);
    if (!/^[A-Za-z0-9.-]{1,253}$/.test(host)) return { close: rejected };
    end = nameEnd;
  }
  return { remote: host + ':' + port, reply: granted, data: data.slice(end + 1) };
});
