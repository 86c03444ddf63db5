import Testing

@Test func placeholderNBDServerTests() {}
