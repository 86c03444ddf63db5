/// The one place the version is written. `iscsi-nbd --version` prints it, scripts/package.sh names the
/// .deb and the sysext image after what the built binary prints, and VersionTests holds the docs and dist
/// files to it.
public enum ISCSINBDVersion {
    public static let current = "0.7.0"
}
