// Java 17 HttpClient for the real-client lab: one GET, compiled at test time with javac.
//   java -cp DIR LabFetch URL
// Prints `HTTP <status> <version>` and the body; exits 0 on 200, 1 otherwise. Trust is the JVM's
// (cacerts, or -Djavax.net.ssl.trustStore / JAVA_TOOL_OPTIONS); exceptions surface as the JVM
// prints them.
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;

public class LabFetch {
    public static void main(String[] args) throws Exception {
        HttpClient client = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(20)).build();
        HttpRequest req = HttpRequest.newBuilder(URI.create(args[0]))
                .timeout(Duration.ofSeconds(20)).build();
        HttpResponse<String> resp = client.send(req, HttpResponse.BodyHandlers.ofString());
        System.out.println("HTTP " + resp.statusCode() + " " + resp.version());
        System.out.println(resp.body());
        System.exit(resp.statusCode() == 200 ? 0 : 1);
    }
}
