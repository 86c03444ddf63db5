// swift-tools-version: 6.1
// iscsi-nbd: a userspace iSCSI initiator that serves LUNs over NBD.
// Layout and dependency rules: protocol targets (SCSI, ISCSIProtocol, NBDProtocol, ISCSIConfig) do no IO.
import PackageDescription

let nioCore = Target.Dependency.product(name: "NIOCore", package: "swift-nio")
let nioPosix = Target.Dependency.product(name: "NIOPosix", package: "swift-nio")
let logging = Target.Dependency.product(name: "Logging", package: "swift-log")

let package = Package(
    name: "iscsi-nbd",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "iscsi-nbd", targets: ["iscsi-nbd"])
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "4.0.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
    ],
    targets: [
        // MARK: Pure protocol and logic targets (no IO)
        .target(name: "CCRC32C"),
        .target(name: "SCSI", dependencies: [nioCore]),
        .target(
            name: "ISCSIProtocol",
            dependencies: ["CCRC32C", nioCore, .product(name: "Crypto", package: "swift-crypto")]
        ),
        .target(name: "BlockBackend", dependencies: [nioCore]),
        .target(name: "NBDProtocol", dependencies: [nioCore]),
        .target(name: "ISCSIConfig"),

        // MARK: IO targets
        .target(
            name: "ISCSIClient",
            dependencies: ["ISCSIProtocol", "SCSI", nioCore, nioPosix, logging, .product(name: "NIOConcurrencyHelpers", package: "swift-nio")]
        ),
        .target(
            name: "ISCSIBlockBackend",
            dependencies: ["BlockBackend", "SCSI", nioCore, logging, .product(name: "NIOConcurrencyHelpers", package: "swift-nio")]
        ),
        .target(
            name: "NBDServer",
            dependencies: [
                "NBDProtocol", "BlockBackend", nioCore, nioPosix, logging,
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]
        ),
        .systemLibrary(name: "CLinuxNBD"),
        .target(name: "NBDKernel", dependencies: ["CLinuxNBD", "NBDProtocol", nioCore, nioPosix, logging, .product(name: "NIOConcurrencyHelpers", package: "swift-nio")]),
        .target(name: "ISNS", dependencies: [nioCore, nioPosix, logging]),
        .target(
            name: "ISCSINBDCommand",
            dependencies: [
                "ISCSIClient", "ISCSIBlockBackend", "NBDServer", "NBDKernel", "ISCSIConfig", "ISNS",
                nioCore, nioPosix, logging, .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
            ]
        ),
        .executableTarget(name: "iscsi-nbd", dependencies: ["ISCSINBDCommand"]),
        // Dev tool: NBD handshake on a unix socket + NBD_CMD_CONNECT (scripts/vm/scenario-netlink.sh).
        .executableTarget(name: "nbd-netlink-check", dependencies: ["NBDKernel"]),

        // MARK: Tests
        .target(
            name: "ISCSITestSupport",
            dependencies: ["SCSI", "BlockBackend", "ISCSIProtocol", nioCore, nioPosix, .product(name: "NIOConcurrencyHelpers", package: "swift-nio")]
        ),
        .systemLibrary(name: "CLibNBD", pkgConfig: "libnbd", providers: [.apt(["libnbd-dev"])]),
        .testTarget(name: "SCSITests", dependencies: ["ISCSITestSupport", "SCSI"]),
        .testTarget(
            name: "ISCSIProtocolTests",
            dependencies: ["ISCSITestSupport", "ISCSIProtocol", .product(name: "NIOTestUtils", package: "swift-nio")]
        ),
        .testTarget(
            name: "BlockBackendTests",
            dependencies: ["ISCSITestSupport", "BlockBackend", "ISCSIBlockBackend", "SCSI", "ISCSIClient", nioPosix, logging]
        ),
        .testTarget(name: "NBDProtocolTests", dependencies: ["ISCSITestSupport", "NBDProtocol"]),
        .testTarget(
            name: "NBDServerTests",
            dependencies: [
                "ISCSITestSupport", "NBDServer", "NBDProtocol", "BlockBackend", "CLibNBD", nioCore, nioPosix, logging,
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ]
        ),
        .testTarget(name: "NBDKernelTests", dependencies: ["ISCSITestSupport", "NBDKernel", "CLinuxNBD"]),
        .testTarget(name: "ISCSIConfigTests", dependencies: ["ISCSITestSupport", "ISCSIConfig"], resources: [.copy("Fixtures")]),
        .testTarget(name: "ISNSTests", dependencies: ["ISCSITestSupport", "ISNS", nioCore, nioPosix]),
        .testTarget(name: "ISCSIClientTests", dependencies: ["ISCSITestSupport", "ISCSIClient", "ISCSIProtocol", "SCSI"]),
        .testTarget(name: "ISCSINBDCommandTests", dependencies: ["ISCSITestSupport", "ISCSINBDCommand", nioPosix, logging]),
        .testTarget(
            name: "IntegrationTests",
            dependencies: ["ISCSITestSupport", "ISCSINBDCommand", "ISCSIClient", "ISCSIBlockBackend", "NBDServer", "ISNS", "CLibNBD"]
        ),
    ]
)
