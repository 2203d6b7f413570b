import ArgumentParser
import Outbox
import OutboxMongo

/// Options every process that talks to MongoDB takes.
public struct MongoOptions: ParsableArguments {
    @Option(name: SettingDeclaration.mongodbURI.name, help: SettingDeclaration.mongodbURI.argumentHelp)
    public var mongodbURI: String?

    @Option(name: SettingDeclaration.database.name, help: SettingDeclaration.database.argumentHelp)
    public var database: String?

    @Option(name: SettingDeclaration.logLevel.name, help: SettingDeclaration.logLevel.argumentHelp)
    public var logLevel: String?

    public init() {}

    /// The connection string from `--mongodb-uri`, `MONGODB_URI` or `MONGODB_URI_FILE`, with the
    /// password from `MONGODB_PASSWORD_FILE` when that is set. The password is registered with
    /// `Secrets`, so no output shows it.
    public func resolvedURI(_ settings: Settings) throws -> String {
        let file = SettingDeclaration.mongodbURIFile, passwordFile = SettingDeclaration.mongodbPasswordFile
        let uriSetting = Setting.fromEnvironment(file.env, settings.environment) != nil ? file.env : SettingDeclaration.mongodbURI.label
        var uri = try settings.secret(mongodbURI, .mongodbURI, file: file)
        if let path = Setting.fromEnvironment(passwordFile.env, settings.environment) {
            let password = try settings.readFile(path, setting: passwordFile.env)
            uri = try MongoURI.withPassword(uri, password, setting: passwordFile.env, uriSetting: uriSetting)
        }
        if let password = MongoURI.password(in: uri) { Secrets.register(password) }
        return uri
    }

    public func resolvedDatabase(_ settings: Settings) throws -> String {
        let name = try settings.string(database, .database)
        try OutboxSource.checkDatabase(name, setting: SettingDeclaration.database.label)
        return name
    }
}
