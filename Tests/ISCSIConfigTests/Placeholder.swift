import Testing

@Test func placeholderISCSIConfigTests() {}
