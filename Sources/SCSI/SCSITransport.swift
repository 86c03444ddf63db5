import NIOCore

/// A command descriptor block of 6 to 16 bytes, stored inline (no heap allocation per command).
public struct CDB: Sendable, Hashable, CustomStringConvertible {
    private var storage: (UInt64, UInt64) = (0, 0)
    /// Number of valid bytes (6, 10, 12 or 16).
    public private(set) var count: Int

    /// A CDB of `count` zero bytes.
    public init(count: Int) {
        precondition((1...16).contains(count), "a CDB has 1 to 16 bytes")
        self.count = count
    }

    public init<S: Sequence>(_ bytes: S) where S.Element == UInt8 {
        self.init(count: 16)
        var n = 0
        for b in bytes {
            precondition(n < 16, "a CDB has at most 16 bytes")
            self[n] = b
            n += 1
        }
        precondition(n > 0, "a CDB has at least one byte")
        self.count = n
    }

    public subscript(index: Int) -> UInt8 {
        get {
            precondition(index >= 0 && index < 16)
            let word = index < 8 ? storage.0 : storage.1
            return UInt8(truncatingIfNeeded: word >> (UInt64(index % 8) * 8))
        }
        set {
            precondition(index >= 0 && index < 16)
            let shift = UInt64(index % 8) * 8
            let mask = ~(UInt64(0xFF) << shift)
            if index < 8 {
                storage.0 = (storage.0 & mask) | (UInt64(newValue) << shift)
            } else {
                storage.1 = (storage.1 & mask) | (UInt64(newValue) << shift)
            }
        }
    }

    public var opcode: UInt8 { self[0] }

    /// The CDB's bytes zero padded to 16, as two big-endian words (byte 0 is the most significant byte of
    /// `high`): the CDB field of an iSCSI SCSI Command PDU (RFC 7143 §11.3.5) without a byte-by-byte copy.
    public var bigEndianWords: (high: UInt64, low: UInt64) {
        // Bytes past `count` read as zero whatever was stored there.
        let inFirst = min(count, 8)  // bytes 0-7 live in storage.0, byte i in bits 8i..<8i+8
        let inSecond = count - inFirst
        let first = inFirst == 8 ? storage.0 : storage.0 & ((1 << (UInt64(inFirst) * 8)) - 1)
        let second = inSecond == 8 ? storage.1 : storage.1 & ((1 << (UInt64(inSecond) * 8)) - 1)
        return (first.byteSwapped, second.byteSwapped)
    }

    /// The 16-byte CDB field of an iSCSI SCSI Command PDU (RFC 7143 §11.3.5): the CDB, zero padded.
    public func write16(to buffer: inout ByteBuffer) {
        buffer.writeInteger(storage.0, endianness: .little)
        buffer.writeInteger(storage.1, endianness: .little)
    }

    public var bytes: [UInt8] { (0..<count).map { self[$0] } }

    public var description: String { bytes.map { String($0, radix: 16).leftPad2 }.joined(separator: " ") }

    public static func == (lhs: CDB, rhs: CDB) -> Bool {
        lhs.count == rhs.count && lhs.storage.0 == rhs.storage.0 && lhs.storage.1 == rhs.storage.1
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(count)
        hasher.combine(storage.0)
        hasher.combine(storage.1)
    }
}

extension String {
    fileprivate var leftPad2: String { count < 2 ? "0" + self : self }
}

/// SCSI status byte (SAM; scsi-commands.md "Status codes"). Open: unknown values survive.
public struct SCSIStatus: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let good = SCSIStatus(rawValue: 0x00)
    public static let checkCondition = SCSIStatus(rawValue: 0x02)
    public static let conditionMet = SCSIStatus(rawValue: 0x04)
    public static let busy = SCSIStatus(rawValue: 0x08)
    public static let reservationConflict = SCSIStatus(rawValue: 0x18)
    public static let taskSetFull = SCSIStatus(rawValue: 0x28)
    public static let acaActive = SCSIStatus(rawValue: 0x30)
    public static let taskAborted = SCSIStatus(rawValue: 0x40)

    public var description: String {
        switch self {
        case .good: "GOOD"
        case .checkCondition: "CHECK CONDITION"
        case .conditionMet: "CONDITION MET"
        case .busy: "BUSY"
        case .reservationConflict: "RESERVATION CONFLICT"
        case .taskSetFull: "TASK SET FULL"
        case .acaActive: "ACA ACTIVE"
        case .taskAborted: "TASK ABORTED"
        default: "status 0x\(String(rawValue, radix: 16))"
        }
    }
}

/// A logical unit number as a SCSI address (SAM LUN structure, scsi-commands.md "REPORT LUNS").
public struct LogicalUnitNumber: Hashable, Sendable, CustomStringConvertible {
    /// The 8-byte LUN field as sent on the wire (big-endian in the PDU).
    public var encoded: UInt64

    public init(encoded: UInt64) { self.encoded = encoded }

    /// The LUN a user types (0, 1, ...): peripheral device addressing below 256, flat space addressing
    /// up to 16383.
    public init(_ number: UInt16) {
        precondition(number < 16384, "LUN numbers above 16383 need extended addressing")
        if number < 256 {
            self.encoded = UInt64(number) << 48
        } else {
            self.encoded = (UInt64(0x4000 | number)) << 48
        }
    }

    /// The number a user would type, when the encoding is peripheral or flat addressing.
    public var number: UInt16? {
        let first = UInt16(truncatingIfNeeded: encoded >> 48)
        switch first >> 14 {
        case 0: return (first & 0x3FFF) <= 0xFF ? first & 0xFF : nil
        case 1: return first & 0x3FFF
        default: return nil
        }
    }

    public var description: String { number.map(String.init) ?? "0x\(String(encoded, radix: 16))" }
}

/// One SCSI command to execute: the CDB, the data to send (writes) and how much data to expect back.
public struct SCSICommand: Sendable {
    public var cdb: CDB
    /// Data-Out for the command (write payload or parameter list); nil when there is none.
    public var dataOut: ByteBuffer?
    /// Expected Data-In transfer length in bytes; 0 when the command returns no data.
    public var expectedDataInLength: UInt32
    /// Ask for Data-In as the pieces it came in (`SCSICommandResult.dataInSegments`) rather than one
    /// contiguous buffer: a caller that forwards the data spares the copy that joins them. A transport
    /// may ignore it and fill `dataIn` as usual.
    public var segmentedDataIn: Bool

    public init(cdb: CDB, dataOut: ByteBuffer? = nil, expectedDataInLength: UInt32 = 0, segmentedDataIn: Bool = false) {
        self.cdb = cdb
        self.dataOut = dataOut
        self.expectedDataInLength = expectedDataInLength
        self.segmentedDataIn = segmentedDataIn
    }
}

/// The outcome of a command that reached the target and got a status back.
/// Transport failures (connection lost, session failed, timeout) are not statuses: the future fails instead.
public struct SCSICommandResult: Sendable {
    public var status: SCSIStatus
    /// Raw sense data (RFC 7143 §11.4.7.2: the bytes after SenseLength), present with CHECK CONDITION.
    public var senseData: ByteBuffer?
    /// Data-In received; may be shorter than expected (residual underflow) or nil when none came.
    public var dataIn: ByteBuffer?
    /// Residual count from the SCSI Response (underflow positive, overflow negative), 0 when none.
    public var residual: Int64
    /// With `SCSICommand.segmentedDataIn`, when more than one Data-In PDU came: the data in arrival order,
    /// one piece per PDU, and `dataIn` is nil. A single PDU's data is in `dataIn` as usual.
    public var dataInSegments: [ByteBuffer]

    public init(
        status: SCSIStatus, senseData: ByteBuffer? = nil, dataIn: ByteBuffer? = nil, residual: Int64 = 0,
        dataInSegments: [ByteBuffer] = []
    ) {
        self.status = status
        self.senseData = senseData
        self.dataIn = dataIn
        self.residual = residual
        self.dataInSegments = dataInSegments
    }

    /// Data-In as pieces whichever way it came: the segments, or `dataIn` as one piece.
    public var dataInPieces: [ByteBuffer] {
        if !dataInSegments.isEmpty { return dataInSegments }
        return dataIn.map { [$0] } ?? []
    }
}

/// Something that executes SCSI commands on logical units: an iSCSI session, or a fake disk in tests.
public protocol SCSITransport: AnyObject, Sendable {
    /// The event loop on which `execute` is cheapest to call and on which its futures complete.
    var eventLoop: any EventLoop { get }
    /// Queues one command. The future succeeds with the target's status (GOOD or otherwise),
    /// or fails when the command could not be delivered or answered (a transport error).
    func execute(_ command: SCSICommand, lun: LogicalUnitNumber) -> EventLoopFuture<SCSICommandResult>
}
