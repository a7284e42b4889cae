"""Ring 1: the local secret file (``yotonnet.security.localsecret``): where it lives, that it is
made private, shared by concurrent makers, and refused when others could read it."""

from __future__ import annotations

import os
import stat
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from yotonnet.security import localsecret
from yotonnet.security.localsecret import LocalSecretError, ensure_secret, read_secret, secret_path


class SecretFileTests(SynchronousTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.path = os.path.join(self.dir, "sub", "secret")

    def mode(self, path: str) -> int:
        return stat.S_IMODE(os.stat(path).st_mode)

    def test_made_once_private_and_then_reused(self):
        self.assertIsNone(read_secret(self.path))
        value, path, created = ensure_secret(self.path)
        self.assertTrue(created)
        self.assertEqual(path, self.path)
        self.assertEqual(len(value), 2 * localsecret.SECRET_BYTES)
        int(value, 16)  # hex
        self.assertEqual(self.mode(self.path), 0o600)
        self.assertEqual(self.mode(os.path.dirname(self.path)), 0o700)
        again, _, created = ensure_secret(self.path)
        self.assertEqual((again, created), (value, False))
        self.assertEqual(read_secret(self.path), value)

    def test_a_readable_file_is_refused_saying_how_to_fix_it(self):
        ensure_secret(self.path)
        os.chmod(self.path, 0o644)
        with self.assertRaises(LocalSecretError) as cm:
            read_secret(self.path)
        self.assertIn("chmod 600", str(cm.exception))
        self.assertIn("0644", str(cm.exception))

    def test_a_shared_directory_is_refused(self):
        os.makedirs(os.path.dirname(self.path), mode=0o755)
        os.chmod(os.path.dirname(self.path), 0o755)
        with self.assertRaises(LocalSecretError) as cm:
            ensure_secret(self.path)
        self.assertIn("chmod 700", str(cm.exception))
        self.assertFalse(os.path.exists(self.path), "nothing is written into a shared directory")

    def test_a_truncated_file_is_refused(self):
        os.makedirs(os.path.dirname(self.path), mode=0o700)
        with open(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write("abc")
        with self.assertRaises(LocalSecretError):
            read_secret(self.path)

    def test_a_second_maker_reads_the_first_ones_secret(self):
        first, _, _ = ensure_secret(self.path)
        # What a maker that lost the race does: its link fails, it reads the winner's.
        os.unlink(self.path)
        theirs = b"f" * 64
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, theirs)
        os.close(fd)
        self.assertEqual(ensure_secret(self.path)[0], theirs)
        self.assertNotEqual(first, theirs)
        self.assertEqual(
            [n for n in os.listdir(os.path.dirname(self.path)) if n != "secret"], [],
            "no temporary file is left behind",
        )


class PathTests(SynchronousTestCase):
    def env(self, **values):
        saved = {k: os.environ.get(k) for k in values}

        def restore():
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

        self.addCleanup(restore)
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    def test_explicit_file_wins(self):
        self.env(YOTONNET_SECRET_FILE="/tmp/x/secret", XDG_RUNTIME_DIR=tempfile.mkdtemp())
        self.assertEqual(secret_path(), "/tmp/x/secret")

    def test_runtime_dir_when_it_is_ours(self):
        runtime = tempfile.mkdtemp()
        self.env(YOTONNET_SECRET_FILE=None, XDG_RUNTIME_DIR=runtime)
        self.assertEqual(secret_path(), os.path.join(runtime, "yotonnet", "secret"))

    def test_data_home_otherwise(self):
        data = tempfile.mkdtemp()
        self.env(YOTONNET_SECRET_FILE=None, XDG_RUNTIME_DIR="/nonexistent", XDG_DATA_HOME=data)
        self.assertEqual(secret_path(), os.path.join(data, "yotonnet", "secret"))
