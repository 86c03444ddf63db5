#!/usr/bin/env python3
"""Applies a Butane config (variant flatcar, version 1.0.0) to a root directory the way Ignition's files
stage does, for the boot test: no butane or ignition binary is needed on this machine.

    apply-butane.py CONFIG.bu FILES_DIR ROOT

- storage.files: each file is written under ROOT with its mode; contents come from `inline`, from
  `local` (a file in FILES_DIR, as `butane --files-dir FILES_DIR` embeds it) or from a `data:` URL.
- storage.directories: created with their mode.
- systemd.units: `contents` is written to ROOT/etc/systemd/system/NAME and `dropins` beside it; `mask`
  links the unit to /dev/null. `enabled` is what Ignition writes to
  ROOT/etc/systemd/system-preset/20-ignition.preset ("enable NAME" / "disable NAME"); systemd applies
  presets on the machine's first boot (`systemctl preset-all`), which is done here at once for the units
  whose file can be read (from the config, ROOT or the host): their [Install] WantedBy=/RequiredBy= links.
  A unit that only a sysext image brings has no file yet at first boot, as on Flatcar: the image must
  start it itself (an Upholds= drop-in).
Anything else in the config is an error, so the test never passes over a key it does not apply.
"""
import base64
import configparser
import os
import sys
import urllib.parse

import yaml

FILE_KEYS = {"path", "mode", "contents", "overwrite", "user", "group"}
UNIT_KEYS = {"name", "enabled", "contents", "dropins", "mask"}


def fail(message):
    sys.exit(f"apply-butane: {message}")


def under(root, path):
    if not path.startswith("/") or ".." in path.split("/"):
        fail(f"{path}: paths must be absolute, without '..'")
    return os.path.join(root, path.lstrip("/"))


def contents_of(spec, files_dir, where):
    if spec is None:
        return b""
    unknown = set(spec) - {"inline", "local", "source", "compression"}
    if unknown or spec.get("compression"):
        fail(f"{where}: unsupported contents keys {sorted(unknown) or ['compression']}")
    given = [k for k in ("inline", "local", "source") if k in spec]
    if len(given) != 1:
        fail(f"{where}: exactly one of inline, local, source")
    if "inline" in given:
        return spec["inline"].encode()
    if "local" in given:
        local = spec["local"]
        if local.startswith("/") or ".." in local.split("/"):
            fail(f"{where}: local: {local} must be relative to the files directory")
        with open(os.path.join(files_dir, local), "rb") as f:
            return f.read()
    url = spec["source"]
    if not url.startswith("data:"):
        fail(f"{where}: source {url}: only data: URLs here (the test machine fetches nothing)")
    meta, _, data = url[5:].partition(",")
    return base64.b64decode(data) if meta.endswith(";base64") else urllib.parse.unquote_to_bytes(data)


def write(path, data, mode):
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def install_targets(text):
    parser = configparser.ConfigParser(strict=False, interpolation=None, allow_no_value=True)
    parser.optionxform = str
    parser.read_string(text)
    if not parser.has_section("Install"):
        return []
    links = []
    for key, kind in (("WantedBy", "wants"), ("RequiredBy", "requires")):
        for target in (parser.get("Install", key, fallback="") or "").split():
            links.append(f"{target}.{kind}")
    return links


def main():
    if len(sys.argv) != 4:
        fail("usage: apply-butane.py CONFIG.bu FILES_DIR ROOT")
    config_path, files_dir, root = sys.argv[1:]
    with open(config_path) as f:
        config = yaml.safe_load(f)
    if config.get("variant") != "flatcar" or str(config.get("version")) != "1.0.0":
        fail("only variant: flatcar, version: 1.0.0")
    unknown = set(config) - {"variant", "version", "storage", "systemd"}
    if unknown:
        fail(f"unsupported top-level keys {sorted(unknown)}")
    storage = config.get("storage") or {}
    if set(storage) - {"files", "directories"}:
        fail(f"unsupported storage keys {sorted(set(storage) - {'files', 'directories'})}")
    for d in storage.get("directories") or []:
        os.makedirs(under(root, d["path"]), exist_ok=True)
        os.chmod(under(root, d["path"]), d.get("mode", 0o755))
    for spec in storage.get("files") or []:
        if set(spec) - FILE_KEYS:
            fail(f"{spec.get('path')}: unsupported keys {sorted(set(spec) - FILE_KEYS)}")
        if spec.get("user") or spec.get("group"):
            fail(f"{spec['path']}: user/group are not applied here")
        write(under(root, spec["path"]), contents_of(spec.get("contents"), files_dir, spec["path"]), spec.get("mode", 0o644))
        print(f"file {spec['path']} (mode {oct(spec.get('mode', 0o644))})")

    units_dir = os.path.join(root, "etc/systemd/system")
    presets = []
    for unit in (config.get("systemd") or {}).get("units") or []:
        if set(unit) - UNIT_KEYS:
            fail(f"{unit.get('name')}: unsupported keys {sorted(set(unit) - UNIT_KEYS)}")
        name = unit["name"]
        if unit.get("contents"):
            write(os.path.join(units_dir, name), unit["contents"].encode(), 0o644)
            print(f"unit {name}")
        for dropin in unit.get("dropins") or []:
            if dropin.get("contents"):
                write(os.path.join(units_dir, f"{name}.d", dropin["name"]), dropin["contents"].encode(), 0o644)
                print(f"drop-in {name}.d/{dropin['name']}")
        if unit.get("mask"):
            os.makedirs(units_dir, exist_ok=True)
            os.symlink("/dev/null", os.path.join(units_dir, name))
        if "enabled" in unit:
            presets.append((name, bool(unit["enabled"]), unit.get("contents")))
    if presets:
        write(os.path.join(root, "etc/systemd/system-preset/20-ignition.preset"),
              "".join(f"{'enable' if on else 'disable'} {name}\n" for name, on, _ in presets).encode(), 0o644)
    # The first boot's `systemctl preset-all`, for the units whose file can be read now.
    for name, on, contents in presets:
        if not on:
            continue
        source = None
        if contents:
            source = f"/etc/systemd/system/{name}"
        else:
            for d in ("etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system"):
                for base in (root, "/"):
                    if os.path.isfile(os.path.join(base, d, name)):
                        source = f"/{d}/{name}"
                        with open(os.path.join(base, d, name)) as f:
                            contents = f.read()
                        break
                if source:
                    break
        if source is None:
            print(f"preset enable {name}: no unit file at first boot (a sysext image brings it)")
            continue
        for link_dir in install_targets(contents):
            os.makedirs(os.path.join(units_dir, link_dir), exist_ok=True)
            link = os.path.join(units_dir, link_dir, name)
            if not os.path.lexists(link):
                os.symlink(source, link)
            print(f"enable {name}: {link_dir}/{name} -> {source}")


if __name__ == "__main__":
    main()
