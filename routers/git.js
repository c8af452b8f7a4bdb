// @ts-check
// Routes git-upload-pack requests (git clone/fetch over git://) by the repository's owner.
// The git protocol's first pkt-line is "0032git-upload-pack /user/repo.git\0host=example.com\0".
/** @type {Record<string, string>} */
const users = { mojombo: '127.0.0.1:9418', defunkt: '127.0.0.1:9419' };

proxy((data, conn) => {
  const m = /^....git-upload-pack \/([\w.\-]+)\/[\w.\-]+\0host=[\w.\-:]+\0/.exec(data);
  if (!m) return { noop: true };
  if (!Object.hasOwn(users, m[1])) return { close: '0015ERR unknown user\n' }; // a pkt-line
  return { remote: users[m[1]] };
});
