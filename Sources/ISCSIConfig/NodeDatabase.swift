/// A discovered (target, portal, tpgt), from SendTargets or iSNS.
public struct DiscoveredNode: Hashable, Sendable, Comparable {
    public var target: String
    public var portal: Portal
    public var tpgt: Int

    public init(target: String, portal: Portal, tpgt: Int) {
        self.target = target
        self.portal = portal
        self.tpgt = tpgt
    }

    public func nodeID(iface: String = "default") -> NodeID {
        NodeID(target: target, portal: portal, tpgt: tpgt, iface: iface)
    }

    public static func < (a: DiscoveredNode, b: DiscoveredNode) -> Bool {
        (a.target, a.portal, a.tpgt) < (b.target, b.portal, b.tpgt)
    }
}

/// What a rediscovery did. Nothing is ever deleted by discovery: records that the source no longer
/// reports are returned in `vanished` for the caller to show (open-iscsi deletes them, which loses
/// user settings when a target is briefly unreachable: open-iscsi issues #58 and #286).
public struct RediscoveryResult: Hashable, Sendable {
    /// Records created for newly seen nodes (seeded from iscsid.conf).
    public var added: [NodeID] = []
    /// Records that already existed; left exactly as they were (user edits preserved).
    public var kept: [NodeID] = []
    /// Records that came from this discovery source but were not reported this time.
    public var vanished: [NodeID] = []

    public init(added: [NodeID] = [], kept: [NodeID] = [], vanished: [NodeID] = []) {
        self.added = added
        self.kept = kept
        self.vanished = vanished
    }

    /// The pure merge: which discovered nodes need a record, which exist, which records vanished.
    /// `existing` are all current records with their discovery source.
    public static func plan(discovered: [DiscoveredNode], existing: [(id: NodeID, source: DiscoverySource?)],
                            source: DiscoverySource, iface: String = "default") -> RediscoveryResult {
        let existingIDs = Set(existing.map(\.id))
        let discoveredIDs = Set(discovered.map { $0.nodeID(iface: iface) })
        var result = RediscoveryResult()
        for id in discoveredIDs.sorted() {
            if existingIDs.contains(id) { result.kept.append(id) } else { result.added.append(id) }
        }
        result.vanished = existing.filter { $0.id.iface == iface && $0.source == source && !discoveredIDs.contains($0.id) }
            .map(\.id).sorted()
        return result
    }
}

/// The node database: `<configdir>/nodes/<target>/<host>,<port>,<tpgt>/<iface>` files in open-iscsi's
/// layout. Records are written atomically (temporary file + rename) with mode 0600 because they may
/// hold CHAP secrets.
public struct NodeDatabase: Sendable {
    public let configDirectory: String
    public var nodesDirectory: String { configDirectory + "/nodes" }

    public init(configDirectory: String) {
        self.configDirectory = configDirectory
    }

    /// The record file path for `id`.
    public func path(for id: NodeID) -> String {
        "\(nodesDirectory)/\(id.target)/\(id.portalDirectoryName)/\(id.iface)"
    }

    /// All records, sorted. Entries that do not have the layout's shape are skipped, as are
    /// open-iscsi's old-style records (a `<host>,<port>` file instead of a directory).
    public func list() throws(ISCSIConfigError) -> [NodeID] {
        var ids: [NodeID] = []
        for target in try ConfigFiles.list(nodesDirectory) {
            let targetDir = "\(nodesDirectory)/\(target)"
            for portalName in try ConfigFiles.list(targetDir) {
                let portalDir = "\(targetDir)/\(portalName)"
                guard ConfigFiles.isDirectory(portalDir), let (portal, tpgt) = NodeID.parsePortalDirectory(portalName) else { continue }
                for iface in try ConfigFiles.list(portalDir) where !ConfigFiles.isDirectory("\(portalDir)/\(iface)") {
                    ids.append(NodeID(target: target, portal: portal, tpgt: tpgt, iface: iface))
                }
            }
        }
        return ids.sorted()
    }

    /// Loads and validates one record.
    public func load(_ id: NodeID) throws(ISCSIConfigError) -> NodeRecord {
        try id.validateForPath()
        let path = path(for: id)
        guard let text = try ConfigFiles.readIfPresent(path) else {
            throw ISCSIConfigError(.notFound, "no node record for \(id)", file: path)
        }
        return try NodeRecord.parse(text, id: id, file: path)
    }

    /// Records matching `target` and/or `portal` (nil matches anything).
    public func find(target: String? = nil, portal: Portal? = nil) throws(ISCSIConfigError) -> [NodeRecord] {
        var records: [NodeRecord] = []
        for id in try list() where (target == nil || id.target == target) && (portal == nil || id.portal == portal) {
            records.append(try load(id))
        }
        return records
    }

    /// Writes a new record; fails with ``ISCSIConfigError/Code/alreadyExists`` if there is one.
    public func create(_ record: NodeRecord) throws(ISCSIConfigError) {
        try record.id.validateForPath()
        let path = path(for: record.id)
        guard !ConfigFiles.exists(path) else {
            throw ISCSIConfigError(.alreadyExists, "node record for \(record.id) already exists", file: path)
        }
        try save(record)
    }

    /// Writes (or overwrites) a record, atomically, mode 0600.
    public func save(_ record: NodeRecord) throws(ISCSIConfigError) {
        try record.id.validateForPath()
        try ConfigKeys.validate(record.document, file: path(for: record.id))
        let dir = "\(nodesDirectory)/\(record.id.target)/\(record.id.portalDirectoryName)"
        try ConfigFiles.createDirectory(dir)
        try ConfigFiles.writeAtomically(path(for: record.id), contents: record.render(), mode: mode_t(NodeRecord.fileMode))
    }

    /// Sets `key = value` in a record (`iscsiadm -m node -o update -n key -v value`). Known keys are
    /// validated; an unknown key must already be in the record (so typos do not add junk); identity
    /// keys cannot change. An empty value removes the key (open-iscsi does not write empty values).
    @discardableResult
    public func update(_ id: NodeID, key: String, value: String) throws(ISCSIConfigError) -> NodeRecord {
        var record = try load(id)
        guard !NodeRecord.identityKeys.contains(key) else {
            throw ISCSIConfigError(.invalidValue, "\(key) identifies the record and cannot be updated", key: key)
        }
        guard ConfigKeys.isKnown(key) || record.document[key] != nil else {
            throw ISCSIConfigError(.invalidValue, "unknown key \(key)", key: key)
        }
        try ConfigKeys.validate(key: key, value: value)
        if value.isEmpty { record.document.remove(key) } else { record.document.set(key, to: value) }
        try save(record)
        return record
    }

    /// Deletes a record, and its portal and target directories when they become empty.
    public func delete(_ id: NodeID) throws(ISCSIConfigError) {
        try id.validateForPath()
        let path = path(for: id)
        guard ConfigFiles.exists(path) else { throw ISCSIConfigError(.notFound, "no node record for \(id)", file: path) }
        try ConfigFiles.remove(path)
        ConfigFiles.removeIfEmpty("\(nodesDirectory)/\(id.target)/\(id.portalDirectoryName)")
        ConfigFiles.removeIfEmpty("\(nodesDirectory)/\(id.target)")
    }

    /// The record as text with secrets masked (`********`), as `iscsiadm -m node -o show` prints it.
    public func show(_ id: NodeID) throws(ISCSIConfigError) -> String {
        try load(id).show()
    }

    /// Merges a discovery result: creates records for new nodes (seeded from `iscsid`), leaves
    /// existing ones untouched, and reports (does not delete) records from `source` that were not
    /// discovered this time.
    public func applyDiscovery(_ discovered: [DiscoveredNode], source: DiscoverySource,
                               iscsid: ConfigDocument, iface: String = "default") throws(ISCSIConfigError) -> RediscoveryResult {
        for node in discovered { try node.nodeID(iface: iface).validateForPath() }
        var existing: [(id: NodeID, source: DiscoverySource?)] = []
        for id in try list() {
            // A record that cannot be read is still "existing": never overwrite what we cannot parse.
            let recordSource = (try? load(id))?.discoverySource
            existing.append((id, recordSource))
        }
        let result = RediscoveryResult.plan(discovered: discovered, existing: existing, source: source, iface: iface)
        for id in result.added {
            try create(NodeRecord.new(id: id, iscsid: iscsid, discovery: source))
        }
        return result
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
